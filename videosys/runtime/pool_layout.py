"""How a pool of ranks is cut into groups: each group of ``parallel.world_size`` consecutive ranks serves one
request at a time (sequence parallel, CFG parallel); ``world_size / group size`` groups serve different
requests at the same time (data parallel)."""

from __future__ import annotations

from dataclasses import dataclass

from ..parallel import ParallelConfig, ParallelConfigError


@dataclass(frozen=True)
class PoolLayout:
    world_size: int
    parallel: ParallelConfig

    def __post_init__(self) -> None:
        n = self.world_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParallelConfigError(f"world_size: {n!r} not allowed (allowed: an integer >= 1)")
        size = self.parallel.world_size
        if n % size:
            what = f"sp {self.parallel.sp}" + (" x CFG parallel 2" if self.parallel.cfg else "")
            fits = [k for k in range(1, n + 1) if n % (k * self.parallel.cfg_size) == 0]
            raise ParallelConfigError(
                f"{what} = {size} ranks per request does not divide world_size {n} "
                f"(allowed sp for {n} ranks{' with CFG parallel' if self.parallel.cfg else ''}: "
                f"{', '.join(map(str, fits)) or 'none: world_size must be even'})")

    @property
    def group_size(self) -> int:
        """Ranks that serve one request together."""
        return self.parallel.world_size

    @property
    def groups(self) -> int:
        """Requests served at the same time."""
        return self.world_size // self.group_size

    def group_ranks(self, group: int) -> list[int]:
        """World ranks of a group; rank 0 of a group (its first) returns the video."""
        return list(range(group * self.group_size, (group + 1) * self.group_size))

    def describe(self) -> str:
        return f"{self.world_size} ranks: {self.groups} group(s) of {self.parallel.describe()}"
