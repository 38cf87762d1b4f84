"""This rank's place in a parallel layout: its process groups, handed to pipelines and models (never global).

World ranks are laid out CFG-major: ``rank = cfg_rank * sp + sp_rank``. Sequence-parallel groups are the
``sp`` consecutive ranks of one CFG branch; CFG groups pair rank ``i`` with ``i + sp``. Rank 0 (the driver)
encodes the text once and returns the video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .config import ParallelConfig, ParallelConfigError
from .stats import CommStats


@dataclass
class ParallelState:
    config: ParallelConfig
    rank: int = 0
    world_size: int = 1
    sp_rank: int = 0
    cfg_rank: int = 0
    sp_group: Optional[Any] = None
    cfg_group: Optional[Any] = None
    world_group: Optional[Any] = None
    stats: CommStats = field(default_factory=CommStats)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def single(cls) -> "ParallelState":
        """One process, no communication."""
        return cls(config=ParallelConfig())

    @classmethod
    def create(cls, config: ParallelConfig) -> "ParallelState":
        """The state of this process in an initialised ``torch.distributed`` world of ``config.world_size``
        ranks. Every rank must call this (group creation is collective)."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            if config.world_size == 1:
                return cls.single()
            raise ParallelConfigError(f"parallel {config.describe()}: torch.distributed is not initialised")
        world = dist.get_world_size()
        if world != config.world_size:
            raise ParallelConfigError(
                f"parallel {config.describe()}: needs {config.world_size} ranks, the process group has {world}"
            )
        rank = dist.get_rank()
        sp, cfg = config.sp, config.cfg_size
        sp_groups = [dist.new_group(list(range(c * sp, (c + 1) * sp))) for c in range(cfg)]
        cfg_groups = [dist.new_group([s + c * sp for c in range(cfg)]) for s in range(sp)]
        return cls(config=config, rank=rank, world_size=world, sp_rank=rank % sp, cfg_rank=rank // sp,
                   sp_group=sp_groups[rank // sp], cfg_group=cfg_groups[rank % sp], world_group=dist.group.WORLD)

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def sp_size(self) -> int:
        return self.config.sp

    @property
    def cfg_size(self) -> int:
        return self.config.cfg_size

    @property
    def sp_enabled(self) -> bool:
        return self.sp_size > 1

    @property
    def cfg_enabled(self) -> bool:
        return self.cfg_size > 1

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def device_check(self, device: torch.device) -> None:
        """NCCL needs CUDA tensors; gloo takes CPU ones. A clear error instead of a backend failure."""
        import torch.distributed as dist

        if self.world_size > 1:
            backend = dist.get_backend()
            if backend == "nccl" and device.type != "cuda":
                raise ParallelConfigError(f"device {device}: the NCCL backend needs CUDA devices")
