"""Prompt adherence of a demo video: which colour, shape and motion does the video actually show?

:func:`detect` reads uint8 frames ``[T, H, W, 3]`` (or :func:`load_frames` a video file / PNG folder):

* background: the per-channel median of the frame borders (the demo clips keep the object off the border);
* object mask: pixels whose colour is farther than a threshold from the background, cleaned by a 3x3
  majority vote (isolated noise pixels vanish, the object's interior stays);
* colour: the median colour of the object's pixels, nearest palette colour of :data:`~videosys.demo.clips.COLOURS`;
* shape: per frame the object's bounding box (1%-99% quantiles of its pixel coordinates) is filled with the ideal circle, square and triangle
  (apex up) and compared with the mask by intersection over union; the best mean IoU wins;
* motion: the centroid of the first and last quarter of the frames gives the net displacement, the
  object area of the same frames its growth.  Area growth by a factor above ``grow_ratio`` with little
  displacement is ``growing``; displacement under ``still_fraction`` of the frame size is ``still``;
  otherwise the dominant axis and its sign give ``left``/``right``/``up``/``down`` (image y grows down).

Noise degrades it gracefully: a frame with too few object pixels is skipped, and a video where no frame
has an object gives a :class:`Detection` with ``found=False`` and ``None`` attributes (never an error).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from videosys.demo.clips import COLOURS, SHAPES, ClipAttributes, shape_mask

__all__ = ["Detection", "detect", "load_frames", "score"]

_BORDER = 2  # pixels of the frame border the background is read from
_MIN_PIXELS_FRACTION = 0.004  # a frame needs this fraction of object pixels to count (16 px at 64x64)
_MAX_PIXELS_FRACTION = 0.5  # ... and at most this much (more is not one object on a background)
_BOX_QUANTILE = 0.01


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` found; attributes are ``None`` when no object was found."""

    found: bool
    colour: str | None
    shape: str | None
    motion: str | None
    background_rgb: tuple[int, int, int]
    object_rgb: tuple[int, int, int] | None = None
    shape_iou: dict[str, float] | None = None
    displacement: tuple[float, float] | None = None  # (dx, dy) in fractions of the frame size
    area_ratio: float | None = None
    frames_used: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _majority3(mask: np.ndarray) -> np.ndarray:
    """3x3 majority vote over the last two axes (out-of-frame neighbours count as background)."""
    padded = np.pad(mask.astype(np.uint8), [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    h, w = mask.shape[-2:]
    total = sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3))
    return total >= 5


def object_masks(frames: np.ndarray, threshold: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean object masks ``[T, H, W]`` and the background colour (float RGB) of uint8 frames."""
    f = np.asarray(frames, dtype=np.float32)
    b = _BORDER
    border = np.concatenate([f[:, :b].reshape(-1, 3), f[:, -b:].reshape(-1, 3),
                             f[:, :, :b].reshape(-1, 3), f[:, :, -b:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    distance = np.sqrt(((f - background) ** 2).sum(-1))
    return _majority3(distance > threshold), background


def _shape_ious(mask: np.ndarray) -> dict[str, float] | None:
    """IoU of one frame's mask with each ideal shape fitted to its bounding box (``None`` if empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    # a bounding box that a few stray pixels (noise that survived the vote) do not stretch
    x0, x1 = np.quantile(xs, _BOX_QUANTILE), np.quantile(xs, 1 - _BOX_QUANTILE) + 1
    y0, y1 = np.quantile(ys, _BOX_QUANTILE), np.quantile(ys, 1 - _BOX_QUANTILE) + 1
    cx, cy = np.array([(x0 + x1) / 2]), np.array([(y0 + y1) / 2])
    half = max(x1 - x0, y1 - y0) / 2
    size = mask.shape[-1]
    out: dict[str, float] = {}
    for shape in SHAPES:
        # fit the ideal shape's bounding box to the observed one: a square's half side is 0.9 r
        r = np.array([half / 0.9 if shape == "square" else half], dtype=np.float32)
        ideal = shape_mask(shape, cx.astype(np.float32), cy.astype(np.float32), r, size)[0]
        ideal = ideal[: mask.shape[0]]
        inter = np.logical_and(ideal, mask).sum()
        union = np.logical_or(ideal, mask).sum()
        out[shape] = float(inter / union) if union else 0.0
    return out


def detect(frames: np.ndarray, *, threshold: float = 60.0, still_fraction: float = 0.1,
           grow_ratio: float = 1.8) -> Detection:
    """Detect colour, shape and motion of the single object in uint8 frames ``[T, H, W, 3]``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected [T, H, W, 3], got shape {list(frames.shape)}")
    masks, background = object_masks(frames, threshold)
    t, h, w = masks.shape
    bg = tuple(round(v) for v in background)
    areas = masks.reshape(t, -1).sum(1)
    present = (areas >= max(4, _MIN_PIXELS_FRACTION * h * w)) & (areas <= _MAX_PIXELS_FRACTION * h * w)
    if not present.any():
        return Detection(found=False, colour=None, shape=None, motion=None, background_rgb=bg)  # type: ignore[arg-type]

    pixels = np.asarray(frames, dtype=np.float32)[masks & present[:, None, None]]
    rgb = np.median(pixels, axis=0)
    names = list(COLOURS)
    palette = np.asarray([COLOURS[n] for n in names], dtype=np.float32)
    colour = names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]

    ious = [iou for i in np.nonzero(present)[0] if (iou := _shape_ious(masks[i])) is not None]
    mean_iou = {s: float(np.mean([d[s] for d in ious])) for s in SHAPES}
    shape = max(SHAPES, key=lambda s: mean_iou[s])

    idx = np.nonzero(present)[0]
    quarter = max(1, len(idx) // 4)
    first, last = idx[:quarter], idx[-quarter:]
    yy, xx = np.mgrid[0:h, 0:w]

    def centroid(ids: np.ndarray) -> np.ndarray:
        m = masks[ids].astype(np.float32)
        total = m.sum()
        return np.array([(m * xx).sum() / total, (m * yy).sum() / total])

    dx, dy = (centroid(last) - centroid(first)) / np.array([w, h])
    area_ratio = float(areas[last].mean() / max(areas[first].mean(), 1.0))
    distance = float(np.hypot(dx, dy))
    if area_ratio > grow_ratio and distance < 2 * still_fraction:
        motion = "growing"
    elif distance < still_fraction:
        motion = "still"
    elif abs(dx) >= abs(dy):
        motion = "left" if dx < 0 else "right"
    else:
        motion = "up" if dy < 0 else "down"
    return Detection(found=True, colour=colour, shape=shape, motion=motion, background_rgb=bg,  # type: ignore[arg-type]
                     object_rgb=tuple(round(v) for v in rgb), shape_iou=mean_iou,  # type: ignore[arg-type]
                     displacement=(float(dx), float(dy)), area_ratio=area_ratio, frames_used=int(present.sum()))


def score(detection: Detection, expected: ClipAttributes | tuple[str, str, str]) -> dict[str, bool]:
    """Per-attribute correctness (``colour``, ``shape``, ``motion``) and ``all`` (all three right)."""
    colour, shape, motion = expected.combination if isinstance(expected, ClipAttributes) else expected
    result = {"colour": detection.colour == colour, "shape": detection.shape == shape,
              "motion": detection.motion == motion}
    result["all"] = all(result.values())
    return result


def load_frames(path: str | Path) -> np.ndarray:
    """Read a video written by VideoSys (``.gif``, ``.mp4`` or a folder of PNG frames) as uint8 ``[T, H, W, 3]``
    (:func:`videosys.quality.read_video`)."""
    from videosys.quality.video import read_video

    return read_video(path)
