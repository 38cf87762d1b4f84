"""Generation requests: built from a prompt, the model's defaults and user overrides, validated before any
model or GPU work. Every rejection is a :class:`~videosys.errors.RequestError` naming field, value and what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ModelConfig
from .errors import RequestError
from .pab import PABConfig, PABConfigError, PABObserver, resolve_pab

OVERRIDABLE = (
    "negative_prompt", "seed", "frames", "height", "width", "resolution", "aspect", "steps", "guidance", "fps", "pab",
)
MAX_STEPS = 1000


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    seed: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    fps: int
    pab: PABConfig
    resolution: str | None = None  # the size-table names the size came from (Open-Sora), if any
    aspect: str | None = None
    #: sees every computed PAB-routed module output of this request (``videosys.analysis``); not part of the
    #: request's identity or its dict, and only meaningful in this process (a local engine, one rank)
    pab_observer: PABObserver | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "steps": self.steps,
            "guidance": self.guidance,
            "fps": self.fps,
            "pab": self.pab.to_dict(),
            "resolution": self.resolution,
            "aspect": self.aspect,
        }


def build_request(prompt: Any, config: ModelConfig, default_pab: PABConfig, overrides: dict[str, Any]) -> GenerationRequest:
    """Merge defaults and overrides into a request and validate it against ``config``."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise RequestError(unknown[0], overrides[unknown[0]], f"overrides {', '.join(OVERRIDABLE)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    s = config.sampling
    try:
        pab = resolve_pab(given["pab"], config.pab) if "pab" in overrides else default_pab
    except PABConfigError as exc:
        raise RequestError("pab", overrides["pab"], str(exc)) from None
    height, width, resolution, aspect = _resolve_size(given, config)
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=given.get("negative_prompt", s.negative_prompt),
        seed=given.get("seed", s.seed),
        frames=_resolve_frames(given.get("frames", s.frames), config),
        height=height,
        width=width,
        steps=given.get("steps", s.steps),
        guidance=given.get("guidance", s.guidance),
        fps=given.get("fps", s.fps),
        pab=pab,
        resolution=resolution,
        aspect=aspect,
    )
    validate_request(request, config)
    return replace(request, guidance=float(request.guidance), prompt=request.prompt.strip())


def _resolve_frames(value: Any, config: ModelConfig) -> Any:
    """A frame-count alias ("2s") or a digit string becomes its count; anything else is validated later."""
    allowed = config.allowed
    if isinstance(value, str):
        text = value.strip()
        if text in allowed.frame_aliases:
            return allowed.frame_aliases[text]
        if text.isdigit():
            return int(text)
        raise RequestError("frames", value, f"{allowed.describe_frames()} for {config.name}")
    return value


def _resolve_size(given: dict[str, Any], config: ModelConfig) -> tuple[Any, Any, str | None, str | None]:
    """(height, width, resolution, aspect): explicit height/width, or a resolution/aspect of the size table
    (a missing one of the pair comes from the model's defaults), or the defaults."""
    s, allowed = config.sampling, config.allowed
    named = [k for k in ("resolution", "aspect") if k in given]
    explicit = [k for k in ("height", "width") if k in given]
    if named and explicit:
        raise RequestError(named[0], given[named[0]], "either resolution/aspect or height/width, not both")
    if named:
        if not allowed.resolutions:
            raise RequestError(named[0], given[named[0]], f"height and width for {config.name} ({allowed.describe_sizes()})")
        resolution = given.get("resolution", s.resolution or next(iter(allowed.resolutions)))
        if not isinstance(resolution, str) or resolution not in allowed.resolutions:
            raise RequestError("resolution", resolution, f"{', '.join(allowed.resolutions)} for {config.name}")
        aspect = given.get("aspect", s.aspect)
        if not isinstance(aspect, str) or aspect not in allowed.resolutions[resolution]:
            raise RequestError("aspect", aspect, f"{allowed.describe_aspects(resolution)} at {resolution} (height:width)")
        height, width = allowed.resolutions[resolution][aspect]
        return height, width, resolution, aspect
    if explicit:
        height, width = given.get("height", s.height), given.get("width", s.width)
        for res, aspects in allowed.resolutions.items():  # name a table size when it is one
            for aspect, hw in aspects.items():
                if hw == (height, width):
                    return height, width, res, aspect
        return height, width, None, None
    return s.height, s.width, s.resolution, s.aspect


def _int_field(name: str, value: Any, allowed: str, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise RequestError(name, value, allowed)


def validate_request(request: GenerationRequest, config: ModelConfig) -> None:
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise RequestError("prompt", request.prompt, "a non-empty string")
    if not isinstance(request.negative_prompt, str):
        raise RequestError("negative_prompt", request.negative_prompt, "a string")
    _int_field("seed", request.seed, "an integer in [0, 2**63)", 0, 2**63 - 1)
    low = config.allowed.min_steps
    _int_field("steps", request.steps, f"an integer from {low} to {MAX_STEPS} for {config.name}", low, MAX_STEPS)
    g = request.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise RequestError("guidance", g, "a finite number >= 0 (1 or less switches classifier-free guidance off)")
    _int_field("fps", request.fps, "an integer from 1 to 120", 1, 120)
    allowed = config.allowed
    if isinstance(request.frames, bool) or not isinstance(request.frames, int) or not allowed.allows_frames(request.frames):
        raise RequestError("frames", request.frames, f"{allowed.describe_frames()} for {config.name}")
    for name in ("height", "width"):
        _int_field(name, getattr(request, name), f"sizes {allowed.describe_sizes()} for {config.name}", 1)
    if (request.height, request.width) not in allowed.all_sizes:
        raise RequestError(
            "height x width", f"{request.height}x{request.width}", f"{allowed.describe_sizes()} for {config.name}"
        )
    if request.negative_prompt and config.text.get("negative_prompt", True) is False:
        raise RequestError(
            "negative_prompt", request.negative_prompt,
            f"an empty string for {config.name} (its unconditional branch is a learned null caption, not a prompt)",
        )
