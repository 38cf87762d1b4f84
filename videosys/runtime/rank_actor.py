"""One rank of the worker pool, as the body of a Ray actor (wrapped with ``ray.remote`` by the pool, so this
module imports no Ray). It owns one device, joins its group's torch.distributed rendezvous, builds the
pipeline once and serves requests; only a group's first rank returns the video."""

from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any

from ..parallel import ParallelConfig, ParallelState
from ..request import GenerationRequest
from ..result import GenerationResult
from .worker import PipelineSpec

logger = logging.getLogger(__name__)


class RankActor:
    """``rank`` is the world rank (for messages); ``group_rank`` its rank inside its request group."""

    def __init__(self, spec: PipelineSpec, parallel: ParallelConfig, rank: int, group_rank: int,
                 timeout_s: float) -> None:
        logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s rank {rank} %(name)s: %(message)s")
        self.spec = spec
        self.parallel = parallel
        self.rank = rank
        self.group_rank = group_rank
        self.timeout_s = timeout_s
        self.pipeline: Any = None

    def where(self) -> dict[str, Any]:
        """The node address, process id and a free TCP port there (the rendezvous of a group's first rank)."""
        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return {"ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "port": port}

    def setup(self, master_ip: str, master_port: int) -> None:
        """Join the group's process group (NCCL on GPUs, gloo on CPU) and build the pipeline."""
        import torch
        import torch.distributed as dist

        size = self.parallel.world_size
        device = self.spec.device_for(0)  # Ray makes this actor's one GPU the only visible one
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if size > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{master_ip}:{master_port}", rank=self.group_rank,
                                    world_size=size, timeout=datetime.timedelta(seconds=self.timeout_s))
        state = ParallelState.create(self.parallel)
        self.pipeline = self.spec.build(state, local_rank=0)

    def check(self, requests: list[GenerationRequest]) -> None:
        """Raise what the pipeline's pre-run check raises for the first request it cannot serve."""
        for request in requests:
            self.pipeline.check(request)

    def generate(self, request: GenerationRequest) -> GenerationResult | None:
        self.pipeline.check(request)
        return self.pipeline.generate(request, progress=False)
