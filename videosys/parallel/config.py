"""How one request is spread over ranks: sequence-parallel degree and CFG parallel (data parallel, several
requests at once, is the worker pool's business)."""

from __future__ import annotations

from dataclasses import dataclass


class ParallelConfigError(ValueError):
    """A parallel layout that cannot work; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ParallelConfig:
    """``sp`` ranks share every denoiser call's sequence; with ``cfg`` the conditional and unconditional
    halves of classifier-free guidance run on two such groups. One request uses ``world_size`` ranks."""

    sp: int = 1
    cfg: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sp, bool) or not isinstance(self.sp, int) or self.sp < 1:
            raise ParallelConfigError(f"sp: {self.sp!r} not allowed (allowed: an integer >= 1)")
        if not isinstance(self.cfg, bool):
            raise ParallelConfigError(f"cfg_parallel: {self.cfg!r} not allowed (allowed: true or false)")

    @property
    def cfg_size(self) -> int:
        return 2 if self.cfg else 1

    @property
    def world_size(self) -> int:
        """Ranks one request occupies."""
        return self.sp * self.cfg_size

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"sp {self.sp}" + (" x cfg 2" if self.cfg else "") + f" ({self.world_size} ranks)"
