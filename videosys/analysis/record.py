"""Recording how every PAB-routed module's output changes from one denoiser call to the next.

The recording goes through PAB's own hook point: a :class:`DifferenceRecorder` is a
:class:`~videosys.pab.PABObserver`, attached to a request (``request.pab_observer``); the pipeline hands it to
the request's :class:`~videosys.pab.PABRun`, which calls it with every module output it computes. With PAB
off every module is computed at every call, so the recorder sees the whole (kind, site, block) x call grid.

For call ``i >= 1`` and module ``m`` with outputs ``y_i`` and ``y_{i-1}`` (compared in float32):

- ``mse[i]    = mean((y_i - y_{i-1})**2)`` (the paper's measure, Zhao et al. Fig. 3), and
- ``rel_l2[i] = ||y_i - y_{i-1}||_2 / ||y_{i-1}||_2`` (scale-free; what the calibration rule uses by default).

Call 0 has no previous output: its entries are ``None``. Under classifier-free guidance the module's batch
holds both branches (conditional and unconditional): the difference is taken over the whole output tensor,
both branches together.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..pab import ALL_KINDS

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("mse", "rel_l2")
AGGREGATES: tuple[str, ...] = ("mean", "max")
FORMAT = "videosys-pab-differences/1"

CFG_NOTE = ("with classifier-free guidance the module batch holds both branches; each difference is taken over "
            "the whole output tensor (both branches together)")

ModuleKey = tuple[str, str, int]  # (kind, site, block)


def step_differences(current: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, rel_l2)`` of ``current`` against ``previous`` as 0-d float32 tensors (on their device)."""
    if current.shape != previous.shape:
        raise ValueError(f"analysis: output shape changed between calls: {list(previous.shape)} -> {list(current.shape)}")
    cur, prev = current.detach().float(), previous.detach().float()
    diff = cur - prev
    mse = diff.pow(2).mean()
    rel = torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(prev).clamp_min(torch.finfo(torch.float32).tiny)
    return mse, rel


class DifferenceRecorder:
    """A :class:`~videosys.pab.PABObserver` that keeps, per module, the previous call's output and the
    differences of every call from it. One recorder serves one request (``reset`` to reuse it).

    ``keep_on`` is where the previous outputs are held (default: their own device). Holding one output per
    module costs as much memory as a PAB run with every module cached; ``"cpu"`` trades speed for GPU memory.
    """

    def __init__(self, keep_on: str | torch.device | None = None) -> None:
        self.keep_on = None if keep_on is None else torch.device(keep_on)
        self.reset()

    def reset(self) -> None:
        self._previous: dict[ModuleKey, tuple[int, torch.Tensor]] = {}
        self._values: dict[ModuleKey, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._timesteps: dict[int, float] = {}

    def __call__(self, call_index: int, timestep: float, kind: str, site: str, block: int, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"analysis: module {kind}/{site or '-'}/{block} returned {type(output).__name__}, not a tensor")
        key = (kind, site, int(block))
        self._timesteps[call_index] = float(timestep)
        values = self._values.setdefault(key, {})
        prev = self._previous.get(key)
        if prev is not None:
            prev_call, prev_out = prev
            if prev_call != call_index - 1:  # a skipped call (a broadcast under PAB): no step difference
                logger.debug("analysis: %s has no output at call %d; no difference at call %d", key, call_index - 1, call_index)
            else:
                values[call_index] = step_differences(output, prev_out.to(output.device))
        kept = output.detach()
        kept = kept.to(self.keep_on, copy=True) if self.keep_on is not None else kept.clone()
        self._previous[key] = (call_index, kept)

    def profile(self, **meta: Any) -> DifferenceProfile:
        """The recorded differences (host floats) with ``meta`` (model, prompt, seed, steps, guidance...);
        drops the kept outputs."""
        num_calls = max(self._timesteps) + 1 if self._timesteps else 0
        timesteps = [self._timesteps.get(i, math.nan) for i in range(num_calls)]
        modules: dict[ModuleKey, dict[str, list[float | None]]] = {}
        for key in sorted(self._values, key=_module_order):
            series: dict[str, list[float | None]] = {m: [None] * num_calls for m in METRICS}
            items = sorted(self._values[key].items())
            if items:
                stacked = torch.stack([torch.stack(v) for _, v in items]).cpu().tolist()  # one host copy
                for (call, _), (mse, rel) in zip(items, stacked):
                    series["mse"][call] = mse
                    series["rel_l2"][call] = rel
            modules[key] = series
        self._previous.clear()
        return DifferenceProfile(timesteps=timesteps, modules=modules, meta=dict(meta))


def _module_order(key: ModuleKey) -> tuple[int, str, int]:
    kind, site, block = key
    return (ALL_KINDS.index(kind) if kind in ALL_KINDS else len(ALL_KINDS), site, block)


def _nanmean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _nanmax(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return max(vals) if vals else None


@dataclass
class DifferenceProfile:
    """Step-to-step differences of every recorded module of one generation.

    ``timesteps[i]`` is the model timestep of denoiser call ``i``; ``modules[(kind, site, block)][metric][i]``
    is the difference of that module's output at call ``i`` from call ``i - 1`` (``None`` at call 0).
    """

    timesteps: list[float]
    modules: dict[ModuleKey, dict[str, list[float | None]]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_calls(self) -> int:
        return len(self.timesteps)

    @property
    def kinds(self) -> list[str]:
        """The recorded kinds, in the order spatial, temporal, cross, mlp."""
        seen = {k for k, _, _ in self.modules}
        return [k for k in ALL_KINDS if k in seen] + sorted(seen - set(ALL_KINDS))

    def layers(self, kind: str) -> list[ModuleKey]:
        """The modules of one kind, ordered by site then block."""
        return [key for key in self.modules if key[0] == kind]

    def blocks(self, kind: str) -> list[int]:
        return sorted({b for k, _, b in self.modules if k == kind})

    def _check(self, kind: str, metric: str, aggregate: str = "mean") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric: {metric!r} not allowed (allowed: {', '.join(METRICS)})")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: {aggregate!r} not allowed (allowed: {', '.join(AGGREGATES)})")
        if not self.layers(kind):
            raise ValueError(f"analysis: no {kind!r} modules were recorded (recorded: {', '.join(self.kinds) or 'none'})")

    def kind_curve(self, kind: str, metric: str = "rel_l2", aggregate: str = "mean") -> list[float | None]:
        """Per call, the ``metric`` of ``kind`` over its layers (and sites) by ``aggregate`` (mean or max)."""
        self._check(kind, metric, aggregate)
        reduce = _nanmean if aggregate == "mean" else _nanmax
        series = [self.modules[key][metric] for key in self.layers(kind)]
        return [reduce(s[i] for s in series) for i in range(self.num_calls)]

    def block_curves(self, kind: str, metric: str = "rel_l2", aggregate: str = "mean") -> dict[int, list[float | None]]:
        """Per block index, per call, the ``metric`` of ``kind`` over the block's sites (e.g. a Latte block's
        spatial and temporal MLP) by ``aggregate``."""
        self._check(kind, metric, aggregate)
        reduce = _nanmean if aggregate == "mean" else _nanmax
        out: dict[int, list[float | None]] = {}
        for block in self.blocks(kind):
            series = [v[metric] for (k, _, b), v in self.modules.items() if k == kind and b == block]
            out[block] = [reduce(s[i] for s in series) for i in range(self.num_calls)]
        return out

    def matrix(self, kind: str, metric: str = "rel_l2") -> tuple[list[str], list[list[float | None]]]:
        """Row labels (``site/block``) and a layers x calls matrix of one kind."""
        self._check(kind, metric)
        keys = self.layers(kind)
        labels = [f"{site}/{block}" if site else str(block) for _, site, block in keys]
        return labels, [list(self.modules[key][metric]) for key in keys]

    # -- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self.meta,
            "num_calls": self.num_calls,
            "timesteps": list(self.timesteps),
            "metrics": {"mse": "mean((y_i - y_{i-1})^2)", "rel_l2": "||y_i - y_{i-1}|| / ||y_{i-1}||"},
            "note": CFG_NOTE,
            "per_kind": {k: {m: self.kind_curve(k, m) for m in METRICS} for k in self.kinds},
            "modules": [{"kind": k, "site": s, "block": b, **{m: v[m] for m in METRICS}}
                        for (k, s, b), v in self.modules.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DifferenceProfile:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"analysis: not a differences file (expected format {FORMAT!r})")
        try:
            modules = {(str(m["kind"]), str(m["site"]), int(m["block"])): {k: list(m[k]) for k in METRICS}
                       for m in data["modules"]}
            timesteps = [float(t) for t in data["timesteps"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"analysis: malformed differences file ({type(exc).__name__}: {exc})") from None
        for key, series in modules.items():
            if any(len(v) != len(timesteps) for v in series.values()):
                raise ValueError(f"analysis: module {key} has a series whose length is not num_calls {len(timesteps)}")
        skip = {"format", "num_calls", "timesteps", "metrics", "note", "per_kind", "modules"}
        return cls(timesteps=timesteps, modules=modules, meta={k: v for k, v in data.items() if k not in skip})

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DifferenceProfile:
        """Read ``differences.json`` (or the folder ``videosys analyze`` wrote it to)."""
        path = Path(path)
        if path.is_dir():
            path = path / "differences.json"
        if not path.is_file():
            raise FileNotFoundError(f"analysis: {str(path)!r} does not exist (run `videosys analyze -o DIR` first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"analysis: {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save_csv(self, path: str | Path) -> Path:
        """Long format, one row per module and call >= 1: kind, site, block, call, timestep, mse, rel_l2."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["kind", "site", "block", "call", "timestep", "mse", "rel_l2"])
            for (kind, site, block), series in self.modules.items():
                for i in range(self.num_calls):
                    if series["mse"][i] is None:
                        continue
                    writer.writerow([kind, site, block, i, _fmt(self.timesteps[i]), repr(series["mse"][i]),
                                     repr(series["rel_l2"][i])])
        return path


def _fmt(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else repr(t)


def chain_observers(*observers: Any) -> Any:
    """One observer that calls each of ``observers`` in order (e.g. a recorder and a test's own)."""

    def observe(call_index: int, timestep: float, kind: str, site: str, block: int, output: Any) -> None:
        for obs in observers:
            obs(call_index, timestep, kind, site, block, output)

    return observe


def record_generation(engine: Any, prompt: str, keep_on: str | None = None, observers: Sequence[Any] = (),
                      **overrides: Any) -> tuple[DifferenceProfile, Any]:
    """Generate one video with ``engine`` (a local :class:`~videosys.VideoSysEngine`) with PAB off and record
    the step differences of every module. ``overrides`` are request overrides (steps, seed, guidance...);
    ``observers`` also see every module output. Returns the profile and the generation result."""
    from dataclasses import replace

    if "pab" in overrides and overrides["pab"] not in (None, "none", False):
        raise ValueError("analysis: records with PAB off (every module computed at every call); do not pass pab")
    if getattr(engine, "layout", None) is not None and engine.layout.world_size != 1:
        raise ValueError("analysis: needs a single-process engine (world_size 1); a rank only sees its shard")
    overrides = {**overrides, "pab": "none"}
    request = engine.make_request(prompt, **overrides)
    recorder = DifferenceRecorder(keep_on=keep_on)
    observer = chain_observers(recorder, *observers) if observers else recorder
    request = replace(request, pab_observer=observer)
    result = engine.generate_requests([request])[0]
    if isinstance(result, Exception):  # pragma: no cover - generate_requests raises without return_exceptions
        raise result
    profile = recorder.profile(
        model=engine.model, prompt=request.prompt, seed=request.seed, steps=request.steps,
        guidance=request.guidance, frames=request.frames, height=request.height, width=request.width,
        dtype=str(engine.dtype).removeprefix("torch."), device=str(engine.device),
    )
    if profile.num_calls == 0:
        raise RuntimeError("analysis: the run routed no module through PAB; nothing was recorded")
    return profile, result
