"""Procedurally generated text-to-video clips: one flat-coloured shape moving over a plain background.

Every clip is described by :class:`ClipAttributes` (object colour, shape, motion, background colour) and
drawn by :func:`render_clip` from those attributes plus a few continuous parameters (:class:`ClipLayout`:
size, start and end position) that a seeded :class:`numpy.random.Generator` picks.  Captions are plain
English built from the attributes with several phrasings (:func:`caption`); :func:`canonical_caption` is
the one fixed phrasing used for evaluation prompts (``"a red circle moving left"``).

Held-out split (see :func:`is_held_out`): a (colour, shape, motion) combination with indices
``(c, s, m)`` in the orders of :data:`COLOURS`, :data:`SHAPES` and :data:`MOTIONS` is held out when
``(c + 2*s + 3*m) % 7 == 3``.  The background is not part of the rule (a held-out combination is held
out on every background).  The rule holds out about one combination in seven, and never all combinations
of a pair: for every colour/shape, colour/motion and shape/motion pair, at least one combination with that
pair is in the training split, so held-out prompts test composition of attributes seen in training.

All pixel geometry is expressed in fractions of the frame size, so the same seed gives the same clip
layout at 64x64 and at 128x128.  Nothing here keeps state between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FRAME_SIZE",
    "MOTIONS",
    "NUM_FRAMES",
    "SHAPES",
    "Clip",
    "ClipAttributes",
    "ClipLayout",
    "all_combinations",
    "canonical_caption",
    "caption",
    "caption_corpus",
    "caption_vocabulary",
    "captions_for",
    "held_out_combinations",
    "is_held_out",
    "make_clip",
    "render_clip",
    "sample_attributes",
    "sample_layout",
    "shape_mask",
    "train_combinations",
]

#: Object colours (name -> RGB), all saturated, so none can be confused with a background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (150, 60, 210),
}

#: Background colours (name -> RGB), all neutral; their names never name an object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "gray": (120, 120, 120),
    "beige": (225, 210, 175),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Motions: four directions, a shape that stays in place and one that grows in place.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "growing")

NUM_FRAMES = 16
FRAME_SIZE = 64

# Geometry, as fractions of the frame size.
_RADIUS = (0.11, 0.15)  # half-extent of a moving / still shape
_GROW_RADIUS = ((0.06, 0.08), (0.19, 0.22))  # start and end half-extent of a growing shape
_TRAVEL_OF_SPAN = (0.8, 1.0)  # distance a moving shape covers, as a share of the free span it can cross
_MARGIN = 0.04  # kept free between the shape and the frame border (the scorer reads the border)
_SQUARE_SCALE = 0.9  # a square's half side relative to the radius (close to a circle's visual size)

_MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moving left", "moving to the left", "sliding left", "going left"),
    "right": ("moving right", "moving to the right", "sliding right", "going right"),
    "up": ("moving up", "moving upwards", "sliding up", "going up"),
    "down": ("moving down", "moving downwards", "sliding down", "going down"),
    "still": ("standing still", "staying still", "not moving", "resting in place"),
    "growing": ("growing", "getting bigger", "growing larger", "expanding"),
}
_CANONICAL_MOTION = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                     "still": "standing still", "growing": "growing"}

# {c} colour, {s} shape, {m} motion phrase, {b} background.
_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} {m}",
    "a {c} {s} {m} on a {b} background",
    "{c} {s} {m}",
    "the {c} {s} is {m}",
    "a {s} in {c} {m}",
    "a {c} {s} {m}, {b} background",
    "a video of a {c} {s} {m} on a {b} background",
    "on a {b} background, a {c} {s} {m}",
)


@dataclass(frozen=True, order=True)
class ClipAttributes:
    """What a clip shows: names from :data:`COLOURS`, :data:`SHAPES`, :data:`MOTIONS`, :data:`BACKGROUNDS`."""

    colour: str
    shape: str
    motion: str
    background: str = "black"

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.colour, COLOURS, "colour"), (self.shape, SHAPES, "shape"),
                                     (self.motion, MOTIONS, "motion"), (self.background, BACKGROUNDS, "background")):
            if value not in allowed:
                raise ValueError(f"{what}: {value!r} not allowed (allowed: {', '.join(allowed)})")

    @property
    def combination(self) -> tuple[str, str, str]:
        """The (colour, shape, motion) triple the held-out split is defined on."""
        return (self.colour, self.shape, self.motion)


@dataclass(frozen=True)
class ClipLayout:
    """Continuous parameters of a clip, in fractions of the frame size.

    The shape's centre moves linearly from ``start`` to ``end`` (x, y; y grows downwards) and its
    half-extent from ``radius[0]`` to ``radius[1]`` over the clip.
    """

    start: tuple[float, float]
    end: tuple[float, float]
    radius: tuple[float, float]


@dataclass(frozen=True)
class Clip:
    """A rendered clip: uint8 frames ``[T, H, W, 3]``, its attributes, layout and a caption."""

    frames: np.ndarray
    attributes: ClipAttributes
    layout: ClipLayout
    caption: str


# -- held-out split ---------------------------------------------------------------------------------
def all_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple, in the order of the attribute tables."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """Whether the (colour, shape, motion) combination is held out of training (rule: module docstring)."""
    c, s, m = list(COLOURS).index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (c + 2 * s + 3 * m) % 7 == 3


def train_combinations() -> list[tuple[str, str, str]]:
    """The combinations clips of the training split are drawn from."""
    return [combo for combo in all_combinations() if not is_held_out(*combo)]


def held_out_combinations() -> list[tuple[str, str, str]]:
    """The combinations no training clip shows (evaluation prompts use these)."""
    return [combo for combo in all_combinations() if is_held_out(*combo)]


# -- sampling ---------------------------------------------------------------------------------------
def sample_attributes(rng: np.random.Generator, split: str = "train") -> ClipAttributes:
    """Uniformly pick a combination of ``split`` (``"train"``, ``"held_out"`` or ``"all"``) and a background."""
    combos = {"train": train_combinations, "held_out": held_out_combinations, "all": all_combinations}
    if split not in combos:
        raise ValueError(f"split: {split!r} not allowed (allowed: {', '.join(combos)})")
    pool = combos[split]()
    colour, shape, motion = pool[int(rng.integers(len(pool)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return ClipAttributes(colour, shape, motion, background)


def sample_layout(rng: np.random.Generator, motion: str) -> ClipLayout:
    """Pick size and trajectory for ``motion``; the shape always stays ``_MARGIN`` inside the frame."""
    if motion == "growing":
        r0 = float(rng.uniform(*_GROW_RADIUS[0]))
        r1 = float(rng.uniform(*_GROW_RADIUS[1]))
        lo, hi = r1 + _MARGIN, 1.0 - r1 - _MARGIN
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        return ClipLayout(start=centre, end=centre, radius=(r0, r1))
    r = float(rng.uniform(*_RADIUS))
    lo, hi = r + _MARGIN, 1.0 - r - _MARGIN
    if motion == "still":
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        return ClipLayout(start=centre, end=centre, radius=(r, r))
    # The shape crosses most of the frame, entering on the side opposite its direction: where it is in each
    # frame follows from the caption (as colour does), not from the noise the sampler starts from.
    span = hi - lo
    travel = span * float(rng.uniform(*_TRAVEL_OF_SPAN))
    across = float(rng.uniform(lo, hi))  # the coordinate that does not change
    slack = float(rng.uniform(0.0, span - travel))
    a0 = hi - slack if motion in ("left", "up") else lo + slack
    a1 = a0 - travel if motion in ("left", "up") else a0 + travel
    if motion in ("left", "right"):
        return ClipLayout(start=(a0, across), end=(a1, across), radius=(r, r))
    return ClipLayout(start=(across, a0), end=(across, a1), radius=(r, r))


# -- rendering --------------------------------------------------------------------------------------
def shape_mask(shape: str, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks ``[T, size, size]`` of ``shape`` with centres ``(cx, cy)`` and half-extents ``r``
    (arrays ``[T]``, in pixels); pixels are sampled at their centres."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    x = grid[None, None, :] - cx[:, None, None]
    y = grid[None, :, None] - cy[:, None, None]
    r = r[:, None, None]
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        half = r * _SQUARE_SCALE
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "triangle":
        # apex up at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
        return (y >= -r) & (y <= r) & (np.abs(x) <= (y + r) / 2)
    raise ValueError(f"shape: {shape!r} not allowed (allowed: {', '.join(SHAPES)})")


def render_clip(attributes: ClipAttributes, layout: ClipLayout, size: int = FRAME_SIZE,
                frames: int = NUM_FRAMES) -> np.ndarray:
    """Draw the clip: uint8 ``[frames, size, size, 3]`` (hard-edged flat colours, no noise)."""
    s = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    cx = (layout.start[0] + (layout.end[0] - layout.start[0]) * s) * size
    cy = (layout.start[1] + (layout.end[1] - layout.start[1]) * s) * size
    r = (layout.radius[0] + (layout.radius[1] - layout.radius[0]) * s) * size
    mask = shape_mask(attributes.shape, cx, cy, r, size)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    out[:] = np.asarray(BACKGROUNDS[attributes.background], dtype=np.uint8)
    out[mask] = np.asarray(COLOURS[attributes.colour], dtype=np.uint8)
    return out


def make_clip(rng: np.random.Generator, split: str = "train", size: int = FRAME_SIZE, frames: int = NUM_FRAMES,
              attributes: ClipAttributes | None = None) -> Clip:
    """Draw one random clip of ``split`` (or of the given ``attributes``) with a random caption."""
    attrs = attributes if attributes is not None else sample_attributes(rng, split)
    layout = sample_layout(rng, attrs.motion)
    return Clip(render_clip(attrs, layout, size, frames), attrs, layout, caption(attrs, rng))


# -- captions ---------------------------------------------------------------------------------------
def caption(attributes: ClipAttributes, rng: np.random.Generator) -> str:
    """A random phrasing of the clip (some mention the background, some do not)."""
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    phrases = _MOTION_PHRASES[attributes.motion]
    phrase = phrases[int(rng.integers(len(phrases)))]
    return template.format(c=attributes.colour, s=attributes.shape, m=phrase, b=attributes.background)


def canonical_caption(colour: str, shape: str, motion: str) -> str:
    """The fixed phrasing of a combination, e.g. ``"a red circle moving left"`` (evaluation prompts)."""
    return f"a {colour} {shape} {_CANONICAL_MOTION[motion]}"


def iter_all_captions() -> Iterator[str]:
    """Every caption :func:`caption` can produce (all combinations, templates, phrases, backgrounds)."""
    for colour, shape, motion in all_combinations():
        for template in _TEMPLATES:
            for phrase in _MOTION_PHRASES[motion]:
                for background in BACKGROUNDS:
                    yield template.format(c=colour, s=shape, m=phrase, b=background)


def caption_vocabulary() -> list[str]:
    """The sorted set of words the captions use (punctuation stripped)."""
    words: set[str] = set()
    for template in _TEMPLATES:
        words.update(w.strip(",") for w in template.split() if "{" not in w)
    for phrases in _MOTION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    words.update(COLOURS)
    words.update(BACKGROUNDS)
    words.update(SHAPES)
    return sorted(w for w in words if w)


def caption_corpus(num: int = 2000, seed: int = 0) -> list[str]:
    """Random captions of all combinations (a tokenizer's training text)."""
    rng = np.random.default_rng(seed)
    return [make_caption_only(rng) for _ in range(num)]


def make_caption_only(rng: np.random.Generator) -> str:
    """A random caption of a random combination of any split, without rendering a clip."""
    return caption(sample_attributes(rng, "all"), rng)


def captions_for(attributes: ClipAttributes) -> list[str]:
    """Every caption :func:`caption` can give ``attributes``, in a fixed order (templates x motion phrases)."""
    return [template.format(c=attributes.colour, s=attributes.shape, m=phrase, b=attributes.background)
            for template in _TEMPLATES for phrase in _MOTION_PHRASES[attributes.motion]]
