"""Per-request PAB state: call index, the cache of kept outputs and the counters.

A model never holds PAB state itself. Every broadcastable module routes its work through
``run.compute_or_broadcast(kind, block, fn)`` (or, when its output is added to the residual stream in the
same pass, ``run.add_or_broadcast(kind, block, x, fn)``); ``fn`` holds everything the module costs (norms,
the attention, its sequence-parallel communication), so a broadcast skips all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import torch

from .config import ALL_KINDS, ATTENTION_KINDS, check_cache_format
from .kept import keep as keep_output
from .kept import kept_nbytes, restore
from .scheduler import MLP_COMPUTE, MLP_REUSE, MLP_STORE, PABPlan

T = TypeVar("T")


class PABObserver(Protocol):
    """Called by :meth:`PABRun.compute_or_broadcast` for every module output that is *computed* (a broadcast
    call reuses a kept output and is not reported). ``videosys.analysis`` uses it to measure how module
    outputs change from one denoiser call to the next, through the same hook point PAB decides at."""

    def __call__(self, call_index: int, timestep: float, kind: str, site: str, block: int, output: Any) -> None: ...


@dataclass
class PABStats:
    """Module calls computed and broadcast per kind (spatial, temporal, cross, mlp) in one request, and the
    most bytes its kept outputs held at once (PAB's memory overhead on this rank)."""

    computed: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ALL_KINDS})
    broadcast: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ALL_KINDS})
    peak_kept_bytes: int = 0

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: {"computed": self.computed[k], "broadcast": self.broadcast[k]} for k in ALL_KINDS}

    def summary(self) -> str:
        parts = []
        for k in ALL_KINDS:
            total = self.computed[k] + self.broadcast[k]
            parts.append(f"{k} {self.broadcast[k]}/{total} broadcast")
        return ", ".join(parts)


class PABRun:
    """PAB state of one request. Use as a context manager; leaving it drops every kept tensor.

    ``cache`` is the format outputs are kept in (:mod:`videosys.pab.kept`); :attr:`kept_bytes` is what the
    kept outputs hold now, ``stats.peak_kept_bytes`` the most they held at once.
    """

    def __init__(self, plan: PABPlan, config_name: str = "custom", observer: PABObserver | None = None,
                 cache: str = "native") -> None:
        self.plan = plan
        self.config_name = config_name
        self.observer = observer
        self.cache_format = check_cache_format(cache, "cache")
        self.stats = PABStats()
        self._call = -1
        self._cache: dict[tuple[str, str, int], object] = {}
        self.kept_bytes = 0

    # -- call bookkeeping -------------------------------------------------------------------------
    @property
    def call_index(self) -> int:
        return self._call

    @property
    def timestep(self) -> float:
        return self.plan.timesteps[self._call]

    def begin_call(self) -> int:
        """Advance to the next denoiser call of the request and return its index."""
        if self._call + 1 >= self.plan.num_calls:
            raise RuntimeError(
                f"PAB: denoiser call {self._call + 2} exceeds the {self.plan.num_calls} calls this request planned"
            )
        self._call += 1
        return self._call

    @property
    def repeats_one_call(self) -> bool:
        """Whether every denoiser call of this run does the same work: the plan broadcasts and keeps
        nothing and no observer watches the outputs (so a captured call can be replayed; :meth:`count_call`
        then keeps the counters)."""
        plan = self.plan
        return (
            self.observer is None
            and not any(any(flags) for flags in plan.broadcast.values())
            and not any(any(flags) for flags in plan.keep.values())
            and (not plan.mlp_blocks or all(action == MLP_COMPUTE for action in plan.mlp_actions))
        )

    def count_call(self, computed: dict[str, int]) -> None:
        """Count a call that ran without this run's bookkeeping (a replayed CUDA graph of a call that
        computed ``computed`` modules per kind); only for a run that :attr:`repeats_one_call`."""
        if not self.repeats_one_call:
            raise RuntimeError("PAB: only a run whose calls all do the same work can count a replayed call")
        for kind, n in computed.items():
            self.stats.computed[kind] += n

    # -- the decision -----------------------------------------------------------------------------
    def compute_or_broadcast(self, kind: str, block: int, fn: Callable[[], T], site: str = "") -> T:
        """Return the kept output of this module on a broadcast call, else ``fn()`` (kept if the next
        call will reuse it). ``kind`` is spatial, temporal, cross or mlp; ``site`` separates modules of
        one kind and block index (e.g. the spatial and temporal MLPs of block 3)."""
        key = (kind, site, block)
        reuse, keep = self._decide(kind, block)
        if reuse and key in self._cache:
            return self._reuse(key)  # type: ignore[no-any-return]
        out = fn()
        self._computed(key, out, keep)
        return out

    def add_or_broadcast(self, kind: str, block: int, residual: torch.Tensor | Callable[[], torch.Tensor],
                         fn: Callable[[bool], tuple[torch.Tensor, torch.Tensor | None]],
                         site: str = "") -> torch.Tensor:
        """``residual`` plus this module's output, the output decided as by :meth:`compute_or_broadcast`.
        ``fn(want_output)`` computes the sum in one pass and returns ``(sum, output)``, the output only when
        ``want_output`` (it is then kept or observed; else ``None``, and never materialised by a fused
        kernel). A broadcast call adds the kept output to ``residual``, which may be given as a function
        that makes it (called on broadcast calls only: a module that forms its residual inside ``fn``'s
        kernels, such as STDiT3's MLP after the cross-attention's add, makes it there)."""
        key = (kind, site, block)
        reuse, keep = self._decide(kind, block)
        if reuse and key in self._cache:
            base = residual() if callable(residual) else residual
            return base + self._reuse(key)
        want = keep or self.observer is not None
        total, out = fn(want)
        if want and out is None:
            raise RuntimeError(f"PAB: the {kind} module of block {block} returned no output to keep")
        self._computed(key, out, keep)
        return total

    def _decide(self, kind: str, block: int) -> tuple[bool, bool]:
        """(reuse the kept output on this call, keep this call's output)."""
        i = self._call
        if i < 0:
            raise RuntimeError(f"PAB: the {kind} module of block {block} ran before begin_call()")
        if kind in ATTENTION_KINDS:
            return self.plan.broadcast[kind][i], self.plan.keep[kind][i]
        if kind == "mlp":
            listed = block in self.plan.mlp_blocks
            action = self.plan.mlp_actions[i]
            return listed and action == MLP_REUSE, listed and action == MLP_STORE
        raise ValueError(f"PAB kind {kind!r} not allowed (allowed: {', '.join(ALL_KINDS)})")

    def _reuse(self, key: tuple[str, str, int]) -> Any:
        kind, _, block = key
        self.stats.broadcast[kind] += 1
        kept = self._cache[key]
        if not self._reused_next(kind, block):
            self._drop(key)
        return restore(kept)

    def _computed(self, key: tuple[str, str, int], out: Any, keep: bool) -> None:
        """Count a computed output, report it to the observer, and keep it if the plan says so (``out`` is
        ``None`` only when neither needs it)."""
        kind, site, block = key
        self.stats.computed[kind] += 1
        if self.observer is not None:
            self.observer(self._call, self.plan.timesteps[self._call], kind, site, block, out)
        self._drop(key)
        if keep:
            kept = keep_output(out, self.cache_format)
            self._cache[key] = kept
            self.kept_bytes += kept_nbytes(kept)
            self.stats.peak_kept_bytes = max(self.stats.peak_kept_bytes, self.kept_bytes)

    def _drop(self, key: tuple[str, str, int]) -> None:
        if key in self._cache:
            self.kept_bytes -= kept_nbytes(self._cache.pop(key))

    def _reused_next(self, kind: str, block: int) -> bool:
        nxt = self._call + 1
        if nxt >= self.plan.num_calls:
            return False
        if kind == "mlp":
            return block in self.plan.mlp_blocks and self.plan.mlp_actions[nxt] == MLP_REUSE
        return self.plan.broadcast[kind][nxt]

    # -- lifetime ---------------------------------------------------------------------------------
    @property
    def cached_entries(self) -> int:
        return len(self._cache)

    def close(self) -> PABStats:
        """Drop every kept output (also on an aborted request) and return the counters."""
        self._cache.clear()
        self.kept_bytes = 0
        return self.stats

    def __enter__(self) -> "PABRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_module(pab: PABRun | None, kind: str, block: int, fn: Callable[[], T], site: str = "") -> T:
    """``fn()`` when no PAB run is active, else the run's decision. Models call this."""
    if pab is None:
        return fn()
    return pab.compute_or_broadcast(kind, block, fn, site)


def run_residual(pab: PABRun | None, kind: str, block: int, residual: torch.Tensor | Callable[[], torch.Tensor],
                 fn: Callable[[bool], tuple[torch.Tensor, torch.Tensor | None]], site: str = "") -> torch.Tensor:
    """``residual`` + a module's output, where ``fn(want_output)`` returns ``(sum, output or None)`` (the sum
    in one pass, e.g. a gate kernel that also adds the residual): ``fn(False)[0]`` when no PAB run is
    active, else :meth:`PABRun.add_or_broadcast`. Models call this for modules whose output only ever
    joins the residual stream."""
    if pab is None:
        return fn(False)[0]
    return pab.add_or_broadcast(kind, block, residual, fn, site)
