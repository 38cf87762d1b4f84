"""Offline quality benchmark of the demo model: prompt adherence on held-out attribute combinations,
and, for a PAB preset, adherence and PSNR against the same videos generated with PAB off.

A held-out prompt is the canonical caption of a combination no training clip shows
(:func:`videosys.demo.clips.held_out_combinations`), e.g. ``"a green circle moving left"``; prompt ``i``
of :func:`held_out_prompts` takes combination ``i mod K`` and seed ``seed + i``.  Each generated video is
scored by :func:`videosys.demo.scorer.detect`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videosys.demo.clips import canonical_caption, held_out_combinations
from videosys.demo.scorer import detect, score
from videosys.quality.metrics import (
    psnr,  # re-exported: the eval reports PSNR against PAB off
)

__all__ = ["EvalPrompt", "EvalReport", "compare_pab", "evaluate", "held_out_prompts", "psnr"]

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion", "all")


@dataclass(frozen=True)
class EvalPrompt:
    """One benchmark prompt: its text, the (colour, shape, motion) it asks for, and its seed."""

    prompt: str
    expected: tuple[str, str, str]
    seed: int


@dataclass
class EvalReport:
    """Accuracy per attribute (``colour``, ``shape``, ``motion``) and ``all`` (all three right), in [0, 1]."""

    accuracy: dict[str, float]
    count: int
    pab: str = "none"
    items: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"pab": self.pab, "count": self.count, "accuracy": dict(self.accuracy),
                "seconds": self.seconds, "items": list(self.items)}

    def summary(self) -> str:
        parts = ", ".join(f"{k} {100 * self.accuracy[k]:.1f}%" for k in ATTRIBUTES)
        return f"{self.count} held-out prompts, pab {self.pab}: {parts}"


def held_out_prompts(n: int | None = None, seed: int = 0) -> list[EvalPrompt]:
    """``n`` held-out prompts (default: each held-out combination once), cycling through the combinations."""
    combos = held_out_combinations()
    count = len(combos) if n is None else int(n)
    if count < 1:
        raise ValueError(f"n: {n!r} not allowed (allowed: a positive integer)")
    return [EvalPrompt(canonical_caption(*combos[i % len(combos)]), combos[i % len(combos)], seed + i)
            for i in range(count)]


def _generate(engine: Any, prompts: Sequence[EvalPrompt], pab: Any) -> tuple[list[np.ndarray], float]:
    import time

    overrides = {} if pab is None else {"pab": pab}
    requests = [engine.make_request(p.prompt, seed=p.seed, **overrides) for p in prompts]
    start = time.perf_counter()
    results = engine.generate_requests(requests)
    return [r.frames for r in results], time.perf_counter() - start


def _report(prompts: Sequence[EvalPrompt], videos: Sequence[np.ndarray], pab: str, seconds: float) -> EvalReport:
    totals = dict.fromkeys(ATTRIBUTES, 0)
    items = []
    for prompt, frames in zip(prompts, videos):
        found = detect(frames)
        right = score(found, prompt.expected)
        for key in ATTRIBUTES:
            totals[key] += int(right[key])
        items.append({"prompt": prompt.prompt, "seed": prompt.seed, "expected": list(prompt.expected),
                      "detected": [found.colour, found.shape, found.motion], **right})
    count = len(prompts)
    return EvalReport(accuracy={k: totals[k] / count for k in ATTRIBUTES}, count=count, pab=pab, items=items,
                      seconds=seconds)


def evaluate(engine: Any, prompts: Sequence[EvalPrompt], pab: Any = None) -> EvalReport:
    """Generate every prompt with ``engine`` (a :class:`~videosys.engine.VideoSysEngine`; ``pab`` overrides
    its default PAB setting when given) and score adherence."""
    if not prompts:
        raise ValueError("prompts: empty (allowed: a non-empty list)")
    videos, seconds = _generate(engine, prompts, pab)
    name = "default" if pab is None else str(getattr(pab, "label", pab))
    return _report(prompts, videos, name, seconds)


def compare_pab(engine: Any, prompts: Sequence[EvalPrompt], pab: Any) -> dict[str, Any]:
    """Adherence with PAB off and with ``pab``, and the PSNR of every PAB video against its PAB-off twin.

    Returns ``{"off": EvalReport, "pab": EvalReport, "psnr": {"mean", "min"}, "adherence_drop": points}``.
    """
    off_videos, off_seconds = _generate(engine, prompts, "none")
    on_videos, on_seconds = _generate(engine, prompts, pab)
    off = _report(prompts, off_videos, "none", off_seconds)
    on = _report(prompts, on_videos, str(getattr(pab, "label", pab)), on_seconds)
    values = [psnr(a, b) for a, b in zip(off_videos, on_videos)]
    finite = [v for v in values if math.isfinite(v)]
    for item, value in zip(on.items, values):
        item["psnr"] = value
    return {
        "off": off,
        "pab": on,
        "psnr": {"mean": float(np.mean(finite)) if finite else math.inf, "min": float(min(values))},
        "adherence_drop": 100.0 * (off.accuracy["all"] - on.accuracy["all"]),
    }
