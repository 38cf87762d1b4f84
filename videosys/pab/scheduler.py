"""The PAB decision rule, turned into a plan for one request's schedule of denoiser calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .config import ATTENTION_KINDS, MLPBroadcast, PABConfig

if TYPE_CHECKING:
    from .run import PABObserver, PABRun

logger = logging.getLogger(__name__)

# MLP actions per call, for the listed blocks.
MLP_COMPUTE = "compute"  # compute, keep nothing
MLP_STORE = "store"  # compute and keep the output for the next calls
MLP_REUSE = "reuse"  # reuse the kept output


@dataclass(frozen=True)
class PABPlan:
    """What PAB does at each denoiser call of one request.

    ``broadcast[kind][i]`` is the reference decision (kind on, ``lo < t_i < hi`` strictly, ``i % range != 0``).
    ``keep[kind][i]`` is whether the output computed at call ``i`` must be kept, which is exactly when
    call ``i + 1`` broadcasts: nothing is held longer than a broadcast needs it.
    """

    timesteps: tuple[float, ...]
    broadcast: dict[str, tuple[bool, ...]]
    keep: dict[str, tuple[bool, ...]]
    mlp_actions: tuple[str, ...]
    mlp_blocks: frozenset[int]

    @property
    def num_calls(self) -> int:
        return len(self.timesteps)

    def expected_counts(self, blocks_per_kind: dict[str, int], mlp_sites: int = 1) -> dict[str, dict[str, int]]:
        """Computed / broadcast module calls the plan gives for a model with ``blocks_per_kind[kind]`` modules
        of each attention kind and ``blocks_per_kind['mlp']`` blocks per MLP site (spatial and temporal
        stacks are ``mlp_sites``)."""
        counts: dict[str, dict[str, int]] = {}
        for kind in ATTENTION_KINDS:
            n = blocks_per_kind.get(kind, 0)
            b = sum(self.broadcast[kind]) * n
            counts[kind] = {"computed": self.num_calls * n - b, "broadcast": b}
        n_mlp = blocks_per_kind.get("mlp", 0)
        listed = len([blk for blk in self.mlp_blocks if blk < n_mlp])
        reused = sum(a == MLP_REUSE for a in self.mlp_actions) * listed * mlp_sites
        counts["mlp"] = {"computed": self.num_calls * n_mlp * mlp_sites - reused, "broadcast": reused}
        return counts


class PABScheduler:
    """Stateless: maps a :class:`PABConfig` and a request's call timesteps to a :class:`PABPlan`,
    and opens the per-request :class:`~videosys.pab.run.PABRun`."""

    def __init__(self, config: PABConfig | None = None) -> None:
        self.config = config or PABConfig.disabled()

    def plan(self, call_timesteps: Sequence[float]) -> PABPlan:
        ts = tuple(float(t) for t in call_timesteps)
        n = len(ts)
        broadcast: dict[str, tuple[bool, ...]] = {}
        keep: dict[str, tuple[bool, ...]] = {}
        for kind in ATTENTION_KINDS:
            rule = self.config.attention(kind)
            flags = tuple(rule is not None and rule.broadcasts(i, t) for i, t in enumerate(ts))
            broadcast[kind] = flags
            keep[kind] = tuple(flags[i + 1] if i + 1 < n else False for i in range(n))
        mlp = self.config.mlp
        actions = _mlp_actions(mlp, ts) if mlp is not None else tuple(MLP_COMPUTE for _ in ts)
        blocks = frozenset(mlp.blocks) if mlp is not None else frozenset()
        return PABPlan(timesteps=ts, broadcast=broadcast, keep=keep, mlp_actions=actions, mlp_blocks=blocks)

    def new_run(self, call_timesteps: Sequence[float], observer: PABObserver | None = None) -> PABRun:
        """The per-request run; ``observer`` (optional) sees every computed module output."""
        from .run import PABRun

        return PABRun(self.plan(call_timesteps), config_name=self.config.name, observer=observer,
                      cache=self.config.cache)


def _mlp_key_calls(mlp: MLPBroadcast, ts: tuple[float, ...]) -> set[int]:
    if mlp.match == "exact":
        keys = {int(k) for k in mlp.timesteps}
        return {i for i, t in enumerate(ts) if int(t) in keys}
    calls: set[int] = set()
    for key in mlp.timesteps:
        if ts and min(ts) <= key <= max(ts):
            calls.add(min(range(len(ts)), key=lambda i: (abs(ts[i] - key), i)))
    return calls


def unmatched_mlp_keys(mlp: MLPBroadcast, ts: Sequence[float]) -> list[float]:
    """The configured MLP timesteps that no call of the schedule ``ts`` matches (they broadcast nothing)."""
    ts = tuple(float(t) for t in ts)
    if mlp.match == "exact":
        present = {int(t) for t in ts}
        return [k for k in mlp.timesteps if int(k) not in present]
    lo, hi = (min(ts), max(ts)) if ts else (0.0, -1.0)
    return [k for k in mlp.timesteps if not lo <= k <= hi]


def _mlp_actions(mlp: MLPBroadcast, ts: tuple[float, ...]) -> tuple[str, ...]:
    """A key call computes and keeps; the next ``skip_count`` calls reuse, unless one is itself a key."""
    missed = unmatched_mlp_keys(mlp, ts)
    if missed:
        hint = " (match: nearest keeps them on for other schedules)" if mlp.match == "exact" else ""
        logger.warning("PAB: MLP broadcast keys %s match no denoiser call of this schedule; they broadcast nothing%s",
                       [int(k) if float(k).is_integer() else k for k in missed], hint)
    keys = _mlp_key_calls(mlp, ts)
    actions = [MLP_COMPUTE] * len(ts)
    for i in sorted(keys):
        actions[i] = MLP_STORE
        for j in range(i + 1, min(i + 1 + mlp.skip_count, len(ts))):
            if j in keys:
                break
            actions[j] = MLP_REUSE
    # A store whose output nobody reuses only costs memory.
    for i, action in enumerate(actions):
        if action == MLP_STORE and (i + 1 >= len(ts) or actions[i + 1] != MLP_REUSE):
            actions[i] = MLP_COMPUTE
    return tuple(actions)
