"""PNG plots of a :class:`DifferenceProfile`, drawn with Pillow (no plotting library needed).

- :func:`line_plot`: per kind, the difference over denoiser calls averaged over layers (one line per kind);
- :func:`heat_map`: one kind's layers x calls grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .record import DifferenceProfile

KIND_COLOURS = {"spatial": (31, 119, 180), "temporal": (255, 127, 14), "cross": (44, 160, 44), "mlp": (214, 39, 40)}
_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
_MISSING = (200, 200, 200)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _colormap(x: float) -> tuple[int, int, int]:
    """Viridis-like colour of ``x`` in [0, 1] (linear between five anchors)."""
    x = min(1.0, max(0.0, x)) * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    f = x - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def _nice(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def _tick_calls(n: int, max_ticks: int = 10) -> list[int]:
    step = max(1, math.ceil(n / max_ticks))
    return list(range(0, n, step))


def line_plot(profile: DifferenceProfile, metric: str, path: str | Path, aggregate: str = "mean",
              size: tuple[int, int] = (900, 500)) -> Path:
    """One line per kind: ``metric`` per call, ``aggregate`` over the kind's layers; x labelled call/timestep."""
    width, height = size
    left, right, top, bottom = 80, 130, 40, 70
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    curves = {k: profile.kind_curve(k, metric, aggregate) for k in profile.kinds}
    values = [v for c in curves.values() for v in c if v is not None and math.isfinite(v)]
    ymax = max(values) if values else 1.0
    ymax = ymax * 1.05 if ymax > 0 else 1.0
    n = profile.num_calls
    pw, ph = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (i / max(1, n - 1)) * pw
        return x, top + ph - (v / ymax) * ph

    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    for j in range(6):
        v = ymax * j / 5
        _, y = xy(0, v)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left, y, left + pw, y], fill=(235, 235, 235))
        draw.text((5, y - 6), _nice(v), fill="black", font=font)
    for i in _tick_calls(n):
        x, _ = xy(i, 0)
        draw.line([x, top + ph, x, top + ph + 4], fill="black")
        draw.text((x - 8, top + ph + 6), str(i), fill="black", font=font)
        draw.text((x - 10, top + ph + 20), _nice(profile.timesteps[i]), fill=(90, 90, 90), font=font)
    draw.text((left, height - 28), "denoiser call (grey: timestep)", fill="black", font=font)
    model = profile.meta.get("model", "")
    draw.text((left, 12), f"{model} {metric} between consecutive calls, {aggregate} over layers", fill="black", font=font)
    for idx, (kind, curve) in enumerate(curves.items()):
        colour = KIND_COLOURS.get(kind, (0, 0, 0))
        points = [xy(i, v) for i, v in enumerate(curve) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 10 + 18 * idx
        draw.line([left + pw + 12, ly + 6, left + pw + 36, ly + 6], fill=colour, width=3)
        draw.text((left + pw + 42, ly), kind, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def heat_map(profile: DifferenceProfile, kind: str, metric: str, path: str | Path, log: bool = True) -> Path:
    """Layers (rows, ``site/block``) x calls (columns) of one kind, coloured by ``metric`` (log scale by
    default, since early calls dwarf the middle); call 0, which has no difference, is grey."""
    labels, rows = profile.matrix(kind, metric)
    n = profile.num_calls
    cell_w = max(3, min(24, 800 // max(1, n)))
    cell_h = max(3, min(24, 480 // max(1, len(rows))))
    left, top, right, bottom = 70, 40, 110, 50
    width, height = max(460, left + cell_w * n + right), top + cell_h * len(rows) + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    vals = [v for r in rows for v in r if v is not None and math.isfinite(v) and (v > 0 or not log)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    tlo, thi = tf(lo) if vals else 0.0, tf(hi) if vals else 1.0
    span = thi - tlo if thi > tlo else 1.0
    for r, row in enumerate(rows):
        y = top + r * cell_h
        for i, v in enumerate(row):
            x = left + i * cell_w
            if v is None or not math.isfinite(v) or (log and v <= 0):
                colour = _MISSING
            else:
                colour = _colormap((tf(v) - tlo) / span)
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=colour)
    label_every = max(1, math.ceil(len(rows) * 12 / max(1, cell_h * len(rows))))
    for r in range(0, len(rows), label_every):
        draw.text((4, top + r * cell_h + max(0, cell_h // 2 - 6)), labels[r], fill="black", font=font)
    for i in _tick_calls(n):
        draw.text((left + i * cell_w, top + cell_h * len(rows) + 6), str(i), fill="black", font=font)
    draw.text((left, height - 22), "denoiser call", fill="black", font=font)
    model = profile.meta.get("model", "")
    scale = "log10 " if log else ""
    draw.text((left, 12), f"{model} {kind}: {metric} per layer and call ({scale}colour)", fill="black", font=font)
    bar_x = left + cell_w * n + 20
    bar_h = max(40, cell_h * len(rows))
    for j in range(bar_h):
        draw.line([bar_x, top + j, bar_x + 14, top + j], fill=_colormap(1 - j / max(1, bar_h - 1)))
    draw.text((bar_x + 18, top - 2), _nice(hi), fill="black", font=font)
    draw.text((bar_x + 18, top + bar_h - 10), _nice(lo), fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_plots(profile: DifferenceProfile, folder: str | Path, metrics: Sequence[str] = ("mse", "rel_l2")) -> list[Path]:
    """``lines_<metric>.png`` and ``heatmap_<kind>_<metric>.png`` for every metric and recorded kind."""
    folder = Path(folder)
    paths = []
    for metric in metrics:
        paths.append(line_plot(profile, metric, folder / f"lines_{metric}.png"))
        for kind in profile.kinds:
            paths.append(heat_map(profile, kind, metric, folder / f"heatmap_{kind}_{metric}.png"))
    return paths
