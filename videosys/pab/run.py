"""Per-request PAB state: call index, the cache of kept outputs and the counters.

A model never holds PAB state itself. Every broadcastable module routes its work through
``run.compute_or_broadcast(kind, block, fn)`` (or, when its output is added to the residual stream in the
same pass, ``run.add_or_broadcast(kind, block, x, fn)``); ``fn`` holds everything the module costs (norms,
the attention, its sequence-parallel communication), so a broadcast skips all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from .config import ALL_KINDS, ATTENTION_KINDS, check_cache_format
from .kept import KeptInt8, kept_nbytes, restore
from .kept import keep as keep_output
from .scheduler import MLP_REUSE, MLP_STORE, PABPlan

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


@dataclass(frozen=True)
class RunSnapshot:
    """:meth:`PABRun.snapshot`: the counters, the kept outputs and the fixed slots at one moment."""

    computed: dict[str, int]
    broadcast: dict[str, int]
    cache: dict[tuple[str, str, int], object]
    slots: dict[tuple[str, str, int], object] | None
    kept_bytes: int
    peak_kept_bytes: int


@dataclass(frozen=True)
class CallEffects:
    """:meth:`PABRun.effects_since`: what one call did to the bookkeeping (counts per kind; the kept keys
    after it)."""

    computed: dict[str, int]
    broadcast: dict[str, int]
    kept: frozenset[tuple[str, str, int]]


def _tensors(kept: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(kept, KeptInt8):
        return (kept.values, kept.scales)
    return (kept,) if isinstance(kept, torch.Tensor) else ()


def _same_layout(a: Any, b: Any) -> bool:
    """Whether kept output ``b`` can be written into ``a`` (same format, shapes and dtypes)."""
    ta, tb = _tensors(a), _tensors(b)
    return type(a) is type(b) and len(ta) == len(tb) > 0 and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device for x, y in zip(ta, tb))


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
        #: one buffer per module once :meth:`use_fixed_slots` is on (CUDA graph replays), else ``None``
        self._slots: dict[tuple[str, str, int], object] | None = None
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

    # -- CUDA graph replays (videosys.pipelines.cuda_graph) -------------------------------------------
    def use_fixed_slots(self) -> None:
        """Keep each module's outputs in one buffer from now on, which later keeps overwrite in place (the
        outputs kept so far become those buffers): a CUDA graph reads and writes kept outputs at the
        addresses its capture saw. The buffers stay until the run closes, and :attr:`kept_bytes` counts
        them all."""
        if self._slots is None:
            self._slots = dict(self._cache)

    @property
    def fixed_slots(self) -> bool:
        return self._slots is not None

    def call_signature(self) -> Hashable:
        """What decides the work of the current call: the plan's flags for it, which of its outputs the
        next call reuses (the others are dropped) and which outputs are kept now. With fixed slots
        (:meth:`use_fixed_slots`), two calls of one signature run the same kernels on the same buffers."""
        i, plan = self._call, self.plan
        flags = (tuple((plan.broadcast[k][i], plan.keep[k][i]) for k in ATTENTION_KINDS),
                 plan.mlp_actions[i] if plan.mlp_blocks else None)
        nxt = i + 1
        later = nxt < plan.num_calls
        reused_next = (tuple(later and plan.broadcast[k][nxt] for k in ATTENTION_KINDS),
                       later and bool(plan.mlp_blocks) and plan.mlp_actions[nxt] == MLP_REUSE)
        return flags, reused_next, frozenset(self._cache)

    def snapshot(self) -> RunSnapshot:
        """The bookkeeping now, to measure a call's effects (:meth:`effects_since`) or undo them
        (:meth:`restore_snapshot`)."""
        return RunSnapshot(dict(self.stats.computed), dict(self.stats.broadcast), dict(self._cache),
                           dict(self._slots) if self._slots is not None else None, self.kept_bytes,
                           self.stats.peak_kept_bytes)

    def restore_snapshot(self, snap: RunSnapshot) -> None:
        """Undo what happened since :meth:`snapshot` made ``snap`` (a failed CUDA graph capture ran a call's
        Python, and with it this bookkeeping, without its kernels)."""
        self.stats.computed.update(snap.computed)
        self.stats.broadcast.update(snap.broadcast)
        self._cache = dict(snap.cache)
        self._slots = dict(snap.slots) if snap.slots is not None else None
        self.kept_bytes, self.stats.peak_kept_bytes = snap.kept_bytes, snap.peak_kept_bytes

    def effects_since(self, snap: RunSnapshot) -> CallEffects:
        """What the calls since ``snap`` did to the bookkeeping (with fixed slots: counters and which
        outputs are kept), to repeat for a replayed graph of such a call (:meth:`apply_effects`)."""
        if self._slots is None:
            raise RuntimeError("PAB: a call's effects are only repeatable with fixed slots (use_fixed_slots)")
        return CallEffects(
            computed={k: n - snap.computed[k] for k, n in self.stats.computed.items()},
            broadcast={k: n - snap.broadcast[k] for k, n in self.stats.broadcast.items()},
            kept=frozenset(self._cache),
        )

    def apply_effects(self, effects: CallEffects) -> None:
        """Count a call that ran without this run's Python (a replayed CUDA graph) as :meth:`effects_since`
        recorded it: its modules computed and broadcast, and the outputs kept after it (in the fixed slots
        its kernels wrote)."""
        if self._slots is None:
            raise RuntimeError("PAB: a replayed call's effects need fixed slots (use_fixed_slots)")
        for kind, n in effects.computed.items():
            self.stats.computed[kind] += n
        for kind, n in effects.broadcast.items():
            self.stats.broadcast[kind] += n
        self._cache = {key: self._slots[key] for key in effects.kept}

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
            if self._slots is not None:
                kept = self._into_slot(key, kept)
            else:
                self.kept_bytes += kept_nbytes(kept)
            self._cache[key] = kept
            self.stats.peak_kept_bytes = max(self.stats.peak_kept_bytes, self.kept_bytes)

    def _into_slot(self, key: tuple[str, str, int], kept: Any) -> Any:
        """``kept`` written into the module's fixed slot (made from it where there is none yet, which a
        CUDA graph capture must not need: its allocations belong to the graph); :attr:`kept_bytes` counts
        each slot once."""
        assert self._slots is not None
        slot = self._slots.get(key)
        if slot is None or not _same_layout(slot, kept):
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"PAB: the {key[0]} module of block {key[2]} needs a new kept buffer "
                                   "inside a CUDA graph capture")
            self.kept_bytes += kept_nbytes(kept) - (kept_nbytes(slot) if slot is not None else 0)
            self._slots[key] = kept
            return kept
        for dst, src in zip(_tensors(slot), _tensors(kept)):
            dst.copy_(src)
        return slot

    def _drop(self, key: tuple[str, str, int]) -> None:
        if key in self._cache:
            kept = self._cache.pop(key)
            if self._slots is None:  # a fixed slot stays (and stays counted) until the run closes
                self.kept_bytes -= kept_nbytes(kept)

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
        if self._slots is not None:
            self._slots.clear()
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
