"""From measured step differences to a PAB config: the calibration rule (docs/pab.md, "Calibration").

Let ``d_k(i)`` be the difference of kind ``k`` at denoiser call ``i`` from call ``i - 1`` (by default the
relative L2 ``rel_l2``, averaged over the kind's layers), and ``B`` the budget. Reusing the output computed at
call ``c`` at a later call ``j`` is charged the *drift* ``d_k(c+1) + ... + d_k(j)`` (with ``rel_l2`` an upper
bound, by the triangle inequality, of the relative error of the reused output).

1. **Window.** The calls with ``d_k(i) <= B`` are stable. The window is the longest run of consecutive stable
   calls (ties: the lower mean difference, then the earlier run), shrunk at either end until it no longer
   shares a timestep value with a call outside it. Its bounds ``(lo, hi)`` are the midpoints between the
   run's first/last timestep and the neighbouring calls' timesteps (one unit beyond the schedule's end), so
   PAB's strict test ``lo < t < hi`` selects exactly the run.
2. **Range.** For every ``r`` in ``2..max_range`` PAB's own plan is built (broadcast iff inside the window and
   ``i % r != 0``); ``r`` is feasible when no broadcast call's drift since the last computed call exceeds
   ``B``. The range is the feasible ``r`` that broadcasts the most calls (ties: the smaller ``r``). Since every
   window call is stable, ``r = 2`` is always feasible. A kind with no stable call, or whose best plan
   broadcasts nothing, stays off.
3. **MLP (optional).** Blocks are ranked by their mean MLP difference (sites combined by the aggregate).
   For ``m = 1 .. blocks``, the ``m`` steadiest blocks are taken; key calls are picked from the first call on,
   each the earliest call ``c`` at least ``skip + 1`` calls after the previous key where every chosen block's
   drift over the next ``skip`` calls stays within ``B``. The ``m`` whose plan reuses the most MLP calls
   wins (ties: fewer blocks). Keys are written as timesteps with ``match: nearest``.

The rule is exact for the measured schedule (model, step count, sampler, size); another schedule moves the
timesteps and should be measured again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..pab import (
    ATTENTION_KINDS,
    AttentionBroadcast,
    MLPBroadcast,
    PABConfig,
    PABScheduler,
)
from ..pab.scheduler import MLP_REUSE
from .record import AGGREGATES, METRICS, DifferenceProfile

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.1
DEFAULT_MAX_RANGE = 8


@dataclass(frozen=True)
class KindCalibration:
    """What the rule chose for one kind: the window's calls (first, last), the range, and what the plan does."""

    kind: str
    calls: tuple[int, int] | None
    window: tuple[float, float] | None
    range: int
    broadcast_calls: int
    max_drift: float

    @property
    def enabled(self) -> bool:
        return self.calls is not None and self.broadcast_calls > 0


@dataclass(frozen=True)
class Calibration:
    """A calibrated :class:`PABConfig` with the per-kind report and the rule's parameters."""

    config: PABConfig
    kinds: dict[str, KindCalibration]
    budget: float
    metric: str
    aggregate: str
    max_range: int
    timesteps: tuple[float, ...]
    mlp_report: dict[str, Any] | None = None

    def table(self) -> str:
        """A human-readable table of the choices."""
        lines = [f"{'kind':<9}{'window (lo, hi)':>22}{'calls':>10}{'range':>7}{'broadcast':>11}{'max drift':>11}"]
        for kind, k in self.kinds.items():
            if not k.enabled:
                lines.append(f"{kind:<9}{'off':>22}")
                continue
            win = f"({_num(k.window[0])}, {_num(k.window[1])})"
            lines.append(f"{kind:<9}{win:>22}{f'{k.calls[0]}-{k.calls[1]}':>10}{k.range:>7}"
                         f"{k.broadcast_calls:>6}/{len(self.timesteps):<4}{k.max_drift:>11.4g}")
        mlp = self.config.mlp
        if mlp is None:
            lines.append(f"{'mlp':<9}{'off':>22}")
        else:
            rep = self.mlp_report or {}
            lines.append(f"{'mlp':<9} keys {[_num(t) for t in mlp.timesteps]} (calls {rep.get('key_calls')}), "
                         f"blocks {list(mlp.blocks)}, skip {mlp.skip_count}, max drift {rep.get('max_drift', 0):.4g}")
        return "\n".join(lines)


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _curve(values: Sequence[float | None], kind: str) -> list[float]:
    """Call 0 has no difference (it always computes); a missing later value is an error."""
    out = [0.0]
    for i, v in enumerate(values[1:], start=1):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(f"calibrate: {kind} has no difference at call {i}; measure with PAB off")
        out.append(float(v))
    return out


def window_bounds(timesteps: Sequence[float], first: int, last: int) -> tuple[float, float]:
    """``(lo, hi)`` such that ``lo < t < hi`` holds exactly for calls ``first..last`` of a non-increasing
    schedule: midpoints to the neighbouring calls' timesteps, one unit past the schedule's ends."""
    ts = [float(t) for t in timesteps]
    hi = ts[first] + 1.0 if first == 0 else (ts[first - 1] + ts[first]) / 2
    lo = ts[last] - 1.0 if last == len(ts) - 1 else (ts[last] + ts[last + 1]) / 2
    rounded = (round(lo, 2), round(hi, 2))
    if rounded[0] < ts[last] and ts[first] < rounded[1] and _selects(ts, rounded, first, last):
        return rounded
    return lo, hi


def _selects(ts: Sequence[float], window: tuple[float, float], first: int, last: int) -> bool:
    lo, hi = window
    return all((lo < t < hi) == (first <= i <= last) for i, t in enumerate(ts))


def stable_window(timesteps: Sequence[float], diffs: Sequence[float], budget: float) -> tuple[int, int] | None:
    """Step 1 of the rule: the longest run of calls ``>= 1`` with ``diffs[i] <= budget`` (ties: lower mean, then
    earlier), shrunk so that no timestep value is shared with a call outside; ``None`` if there is none."""
    ts = [float(t) for t in timesteps]
    n = len(ts)
    runs: list[tuple[int, int]] = []
    i = 1
    while i < n:
        if diffs[i] <= budget:
            j = i
            while j + 1 < n and diffs[j + 1] <= budget:
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    best: tuple[int, int] | None = None
    best_key: tuple[float, float, int] | None = None
    for a, b in runs:
        while a <= b and a > 0 and ts[a - 1] == ts[a]:
            a += 1
        while a <= b < n - 1 and ts[b + 1] == ts[b]:
            b -= 1
        if a > b:
            continue
        key = (-(b - a + 1), sum(diffs[a:b + 1]) / (b - a + 1), a)
        if best_key is None or key < best_key:
            best, best_key = (a, b), key
    return best


def plan_drift(flags: Sequence[bool], diffs: Sequence[float]) -> float:
    """The largest drift of a broadcast call: the sum of ``diffs`` since the last computed call."""
    drift, worst = 0.0, 0.0
    for i, broadcast in enumerate(flags):
        if broadcast:
            drift += diffs[i]
            worst = max(worst, drift)
        else:
            drift = 0.0
    return worst


def calibrate_kind(kind: str, timesteps: Sequence[float], diffs: Sequence[float], budget: float,
                   max_range: int = DEFAULT_MAX_RANGE) -> KindCalibration:
    """Steps 1 and 2 of the rule for one attention kind (``diffs[0]`` is ignored: call 0 always computes)."""
    if max_range < 2:
        raise ValueError(f"max_range: {max_range} not allowed (allowed: an integer >= 2)")
    off = KindCalibration(kind=kind, calls=None, window=None, range=1, broadcast_calls=0, max_drift=0.0)
    run = stable_window(timesteps, diffs, budget)
    if run is None:
        return off
    window = window_bounds(timesteps, *run)
    best: KindCalibration | None = None
    for r in range(2, max_range + 1):
        flags = PABScheduler(PABConfig(**{kind: AttentionBroadcast(window=window, range=r)})).plan(timesteps).broadcast[kind]
        drift = plan_drift(flags, diffs)
        count = sum(flags)
        if drift <= budget and count > 0 and (best is None or count > best.broadcast_calls):
            best = KindCalibration(kind=kind, calls=run, window=window, range=r, broadcast_calls=count, max_drift=drift)
    return best or off


def _mlp_keys(curves: Sequence[Sequence[float]], skip: int, budget: float) -> list[int]:
    n = len(curves[0])
    keys: list[int] = []
    c = 0
    while c + 1 < n:
        if all(sum(curve[c + 1:c + 1 + skip]) <= budget for curve in curves):
            keys.append(c)
            c += skip + 1
        else:
            c += 1
    return keys


def calibrate_mlp(profile: DifferenceProfile, budget: float, metric: str = "rel_l2", aggregate: str = "mean",
                  skip: int = 2) -> tuple[MLPBroadcast | None, dict[str, Any]]:
    """Step 3 of the rule: the MLP broadcast (or ``None``) and a report (blocks, key calls, reuses, max drift)."""
    if skip < 1:
        raise ValueError(f"mlp skip: {skip} not allowed (allowed: an integer >= 1)")
    if "mlp" not in profile.kinds:
        return None, {"reason": "no mlp modules were recorded"}
    ts = profile.timesteps
    per_block = {b: _curve(c, f"mlp block {b}") for b, c in profile.block_curves("mlp", metric, aggregate).items()}
    order = sorted(per_block, key=lambda b: (sum(per_block[b][1:]) / max(1, len(ts) - 1), b))
    best: tuple[int, MLPBroadcast, dict[str, Any]] | None = None
    for m in range(1, len(order) + 1):
        blocks = sorted(order[:m])
        keys = _mlp_keys([per_block[b] for b in blocks], skip, budget)
        if not keys:
            continue
        mlp = MLPBroadcast(timesteps=tuple(float(ts[c]) for c in keys), blocks=tuple(blocks), skip_count=skip,
                           match="nearest")
        actions = PABScheduler(PABConfig(mlp=mlp)).plan(ts).mlp_actions
        reused = [a == MLP_REUSE for a in actions]
        score = sum(reused) * m
        if score == 0:
            continue
        drift = max(plan_drift(reused, per_block[b]) for b in blocks)
        if best is None or score > best[0]:
            best = (score, mlp, {"blocks": blocks, "key_calls": keys, "reused_calls": sum(reused),
                                 "max_drift": drift})
    if best is None:
        return None, {"reason": "no block stays within the budget over skip calls"}
    return best[1], best[2]


def calibrate(profile: DifferenceProfile, budget: float = DEFAULT_BUDGET, metric: str = "rel_l2",
              aggregate: str = "mean", max_range: int = DEFAULT_MAX_RANGE, mlp: bool = False, mlp_skip: int = 2,
              mlp_budget: float | None = None, name: str = "calibrated") -> Calibration:
    """Derive a PAB config from a measured :class:`DifferenceProfile` by the rule in this module's docstring."""
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} not allowed (allowed: {', '.join(METRICS)})")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: {aggregate!r} not allowed (allowed: {', '.join(AGGREGATES)})")
    for label, value in (("budget", budget), ("mlp budget", mlp_budget)):
        if value is not None and (isinstance(value, bool) or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{label}: {value!r} not allowed (allowed: a positive number)")
    if profile.num_calls < 2:
        raise ValueError(f"calibrate: {profile.num_calls} denoiser call(s) measured; need at least 2")
    ts = list(profile.timesteps)
    if any(b > a for a, b in pairwise(ts)):
        raise ValueError("calibrate: the measured timesteps are not non-increasing; windows cannot select calls")
    kinds: dict[str, KindCalibration] = {}
    specs: dict[str, AttentionBroadcast | None] = {}
    for kind in ATTENTION_KINDS:
        if kind not in profile.kinds:
            logger.info("calibrate: no %s modules measured; %s stays off", kind, kind)
            kinds[kind] = KindCalibration(kind=kind, calls=None, window=None, range=1, broadcast_calls=0, max_drift=0.0)
            specs[kind] = None
            continue
        diffs = _curve(profile.kind_curve(kind, metric, aggregate), kind)
        k = calibrate_kind(kind, ts, diffs, budget, max_range)
        kinds[kind] = k
        specs[kind] = AttentionBroadcast(window=k.window, range=k.range) if k.enabled else None
    mlp_spec, mlp_report = (calibrate_mlp(profile, mlp_budget or budget, metric, aggregate, mlp_skip)
                            if mlp else (None, None))
    config = PABConfig(name=name, mlp=mlp_spec, **specs)
    return Calibration(config=config, kinds=kinds, budget=budget, metric=metric, aggregate=aggregate,
                       max_range=max_range, timesteps=tuple(ts), mlp_report=mlp_report)


def write_pab_yaml(calibration: Calibration, path: str | Path, source: str = "") -> Path:
    """Write the calibrated config as a YAML file ``--pab FILE`` (and ``PABConfig.from_yaml``) accepts, with
    the rule's parameters and the per-kind choices as comments."""
    import yaml

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"output: {str(path)!r} must end in .yaml or .yml (so --pab reads it as a file)")
    c = calibration
    header = [
        "# PAB config written by `videosys calibrate` (rule: docs/pab.md, Calibration)",
        f"# budget {c.budget} on {c.aggregate} {c.metric} per call; max range {c.max_range}",
    ]
    if source:
        header.append(f"# measured: {source}")
    for kind, k in c.kinds.items():
        header.append(f"# {kind}: " + (f"calls {k.calls[0]}-{k.calls[1]} of {len(c.timesteps)}, "
                                       f"{k.broadcast_calls} broadcast, max drift {k.max_drift:.4g}"
                                       if k.enabled else "off"))
    if c.mlp_report is not None:
        rep = c.mlp_report
        header.append("# mlp: " + (f"key calls {rep['key_calls']}, {rep['reused_calls']} reused calls per block, "
                                   f"max drift {rep['max_drift']:.4g}" if "key_calls" in rep else f"off ({rep['reason']})"))
    body = yaml.safe_dump(c.config.to_dict(), sort_keys=False, default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    PABConfig.from_yaml(path)  # what we wrote must load
    return path
