"""Model configs: the per-model YAML under configs/ (weights, sampling defaults, allowed sizes, PAB presets),
optionally overlaid by a ``videosys.yaml`` that a checkpoint folder carries (e.g. the smoke-test model's sizes)."""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .pab import PABConfigError, PABPresets

OVERLAY_FILE = "videosys.yaml"

_TOP_KEYS = {"name", "description", "weights", "dtype", "sampling", "text", "allowed", "pab"}
_OVERLAY_KEYS = {"description", "sampling", "text", "allowed", "pab"}
_SAMPLING_KEYS = {"steps", "guidance", "frames", "height", "width", "resolution", "aspect", "fps", "negative_prompt", "seed"}
_REQUIRED_SAMPLING = {"steps", "guidance", "frames", "fps"}
_ALLOWED_KEYS = {"frames", "sizes", "max_frames", "frame_aliases", "resolutions", "min_steps"}
# max_length: T5 tokens; aesthetic_score: appended as " aesthetic score: X." (Open-Sora); clean_caption:
# the caption cleaner before tokenising; negative_prompt: whether the model has a negative-prompt branch.
_TEXT_KEYS = {"max_length", "aesthetic_score", "clean_caption", "lowercase", "negative_prompt"}


def project_root() -> Path:
    """The folder holding configs/ and models/: ``$VIDEOSYS_HOME`` if set, else the repository root of an
    editable install, else ``<prefix>/share/videosys`` where a regular install puts them."""
    env = os.environ.get("VIDEOSYS_HOME")
    if env:
        return Path(env).expanduser()
    for candidate in (Path(__file__).resolve().parent.parent, Path(sys.prefix) / "share" / "videosys"):
        if (candidate / "configs").is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's default request. The size is ``height`` x ``width``, or a ``resolution`` name and an
    ``aspect`` key of the model's size table (then height and width are looked up)."""

    steps: int
    guidance: float
    frames: int | str
    height: int | None
    width: int | None
    fps: int
    negative_prompt: str = ""
    seed: int = 0
    resolution: str | None = None
    aspect: str | None = None


@dataclass(frozen=True)
class AllowedSizes:
    """What a model may be asked for.

    Frames: an explicit list (``frames``) and/or every count from 1 to ``max_frames``; ``frame_aliases``
    name counts (``"2s": 51``). Sizes: explicit ``(height, width)`` pairs and/or a ``resolutions`` table
    ``{name: {aspect: (height, width)}}`` (Open-Sora's ``480p`` / ``9:16``); every size of the table is
    also an allowed ``(height, width)`` pair.
    """

    frames: tuple[int, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    max_frames: int | None = None
    frame_aliases: Mapping[str, int] = field(default_factory=dict)
    resolutions: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    min_steps: int = 1  # the sampler's fewest steps (PNDM: 4)

    @property
    def all_sizes(self) -> tuple[tuple[int, int], ...]:
        table = [hw for aspects in self.resolutions.values() for hw in aspects.values()]
        return tuple(dict.fromkeys([*self.sizes, *table]))

    def allows_frames(self, frames: int) -> bool:
        return frames in self.frames or (self.max_frames is not None and 1 <= frames <= self.max_frames)

    def describe_frames(self) -> str:
        parts = [str(f) for f in self.frames]
        if self.max_frames is not None:
            parts.append(f"any integer from 1 to {self.max_frames}")
        parts += [f"{name!r} ({n})" for name, n in self.frame_aliases.items()]
        return ", ".join(parts)

    def describe_sizes(self) -> str:
        parts = [f"{h}x{w}" for h, w in self.sizes]
        if self.resolutions:
            parts.append(f"resolutions {', '.join(self.resolutions)} with their aspect ratios")
        return ", ".join(parts)

    def describe_aspects(self, resolution: str) -> str:
        return ", ".join(self.resolutions.get(resolution, {}))


@dataclass(frozen=True)
class ModelConfig:
    name: str
    description: str
    weights_default: str | None
    weights_official: str | Mapping[str, str] | None  # a hub id, or one per component folder
    dtype_cuda: str
    dtype_cpu: str
    sampling: SamplingDefaults
    text_max_length: int
    allowed: AllowedSizes
    pab: PABPresets
    text: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    source: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        return cls.from_dict(_read_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "ModelConfig":
        where = source
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
        _no_unknown(data, _TOP_KEYS, where)
        try:
            weights = _mapping(data.get("weights", {}), f"{where}: weights")
            dtype = _mapping(data.get("dtype", {}), f"{where}: dtype")
            sampling = _mapping(data.get("sampling"), f"{where}: sampling")
            _no_unknown(sampling, _SAMPLING_KEYS, f"{where}: sampling")
            missing = sorted(_REQUIRED_SAMPLING - set(sampling))
            if missing:
                raise ConfigError(f"{where}: sampling: missing key(s) {missing}")
            allowed = _parse_allowed(_mapping(data.get("allowed"), f"{where}: allowed"), f"{where}: allowed")
            text = _mapping(data.get("text", {}), f"{where}: text")
            _no_unknown(text, _TEXT_KEYS, f"{where}: text")
            defaults = _parse_sampling(sampling, allowed, where)
            return cls(
                name=str(data.get("name", "")),
                description=str(data.get("description", "")),
                weights_default=weights.get("default"),
                weights_official=weights.get("official"),
                dtype_cuda=str(dtype.get("cuda", "float16")),
                dtype_cpu=str(dtype.get("cpu", "float32")),
                sampling=defaults,
                text_max_length=_typed(text.get("max_length", 120), int, f"{where}: text.max_length"),
                text=dict(text),
                allowed=allowed,
                pab=PABPresets.from_dict(_mapping(data.get("pab", {}), f"{where}: pab")),
                raw=copy.deepcopy(dict(data)),
                source=source,
            )
        except PABConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def with_overlay(self, overlay: Mapping[str, Any], source: str) -> "ModelConfig":
        """A copy with the sections of a checkpoint's ``videosys.yaml`` merged in (mappings merge, lists replace)."""
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(overlay).__name__}")
        _no_unknown(overlay, _OVERLAY_KEYS, source)
        merged = _deep_merge(dict(self.raw), overlay)
        return ModelConfig.from_dict(merged, source=f"{self.source} + {source}")

    def with_checkpoint_overlay(self, checkpoint: Path) -> "ModelConfig":
        path = Path(checkpoint) / OVERLAY_FILE
        if not path.is_file():
            return self
        return self.with_overlay(_read_yaml(path) or {}, str(path))


def _parse_allowed(allowed: Mapping[str, Any], where: str) -> AllowedSizes:
    _no_unknown(allowed, _ALLOWED_KEYS, where)
    sizes = allowed.get("sizes", [])
    if not isinstance(sizes, list) or not all(_is_size(s) for s in sizes):
        raise ConfigError(f"{where}.sizes: {sizes!r} not allowed (allowed: a list of [height, width])")
    frames = allowed.get("frames", [])
    if not isinstance(frames, list) or not all(_is_pos_int(f) for f in frames):
        raise ConfigError(f"{where}.frames: {frames!r} not allowed (allowed: a list of positive integers)")
    max_frames = allowed.get("max_frames")
    if max_frames is not None and not _is_pos_int(max_frames):
        raise ConfigError(f"{where}.max_frames: {max_frames!r} not allowed (allowed: a positive integer)")
    aliases = allowed.get("frame_aliases", {}) or {}
    if not isinstance(aliases, Mapping) or not all(isinstance(k, str) and _is_pos_int(v) for k, v in aliases.items()):
        raise ConfigError(f"{where}.frame_aliases: {aliases!r} not allowed (allowed: a mapping name -> frame count)")
    table = allowed.get("resolutions", {}) or {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}.resolutions: expected a mapping resolution -> {{aspect: [height, width]}}")
    resolutions: dict[str, dict[str, tuple[int, int]]] = {}
    for name, aspects in table.items():
        if not isinstance(aspects, Mapping) or not aspects or not all(_is_size(v) for v in aspects.values()):
            raise ConfigError(f"{where}.resolutions.{name}: {aspects!r} not allowed (allowed: {{aspect: [height, width]}})")
        resolutions[str(name)] = {str(a): (int(v[0]), int(v[1])) for a, v in aspects.items()}
    min_steps = allowed.get("min_steps", 1)
    if not _is_pos_int(min_steps):
        raise ConfigError(f"{where}.min_steps: {min_steps!r} not allowed (allowed: a positive integer)")
    if not frames and max_frames is None:
        raise ConfigError(f"{where}: needs frames (a list) or max_frames")
    if not sizes and not resolutions:
        raise ConfigError(f"{where}: needs sizes (a list of [height, width]) or resolutions")
    for name, n in aliases.items():
        if not (n in frames or (max_frames is not None and n <= max_frames)):
            raise ConfigError(f"{where}.frame_aliases.{name}: {n} frames is not an allowed frame count")
    return AllowedSizes(
        frames=tuple(frames),
        sizes=tuple((int(h), int(w)) for h, w in sizes),
        max_frames=max_frames,
        frame_aliases=dict(aliases),
        resolutions=resolutions,
        min_steps=min_steps,
    )


def _parse_sampling(sampling: Mapping[str, Any], allowed: AllowedSizes, where: str) -> SamplingDefaults:
    w = f"{where}: sampling"
    by_table = "resolution" in sampling or "aspect" in sampling
    if by_table:
        res, aspect = sampling.get("resolution"), sampling.get("aspect")
        if "height" in sampling or "width" in sampling:
            raise ConfigError(f"{w}: give height/width or resolution/aspect, not both")
        if res not in allowed.resolutions or aspect not in allowed.resolutions[res]:
            raise ConfigError(f"{w}: resolution {res!r} / aspect {aspect!r} is not in allowed.resolutions")
        height, width = allowed.resolutions[res][aspect]
    else:
        missing = [k for k in ("height", "width") if k not in sampling]
        if missing:
            raise ConfigError(f"{w}: missing key(s) {missing} (or give resolution and aspect)")
        height = _typed(sampling["height"], int, f"{w}.height")
        width = _typed(sampling["width"], int, f"{w}.width")
        res = aspect = None
    frames = sampling["frames"]
    if not (isinstance(frames, str) and frames in allowed.frame_aliases):
        _typed(frames, int, f"{w}.frames")
    return SamplingDefaults(
        steps=_typed(sampling["steps"], int, f"{w}.steps"),
        guidance=float(_typed(sampling["guidance"], (int, float), f"{w}.guidance")),
        frames=frames,
        height=height,
        width=width,
        fps=_typed(sampling["fps"], int, f"{w}.fps"),
        negative_prompt=str(sampling.get("negative_prompt", "") or ""),
        seed=_typed(sampling.get("seed", 0), int, f"{w}.seed"),
        resolution=res,
        aspect=aspect,
    )


def _is_size(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_pos_int(v) for v in value)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _no_unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    return value
