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
_SAMPLING_KEYS = {"steps", "guidance", "frames", "height", "width", "fps", "negative_prompt", "seed"}


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
    steps: int
    guidance: float
    frames: int
    height: int
    width: int
    fps: int
    negative_prompt: str = ""
    seed: int = 0


@dataclass(frozen=True)
class AllowedSizes:
    """What a model may be asked for: frame counts and (height, width) pairs."""

    frames: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]

    def describe_sizes(self) -> str:
        return ", ".join(f"{h}x{w}" for h, w in self.sizes)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    description: str
    weights_default: str | None
    weights_official: str | None
    dtype_cuda: str
    dtype_cpu: str
    sampling: SamplingDefaults
    text_max_length: int
    allowed: AllowedSizes
    pab: PABPresets
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
            missing = sorted(_SAMPLING_KEYS - {"negative_prompt", "seed"} - set(sampling))
            if missing:
                raise ConfigError(f"{where}: sampling: missing key(s) {missing}")
            allowed = _mapping(data.get("allowed"), f"{where}: allowed")
            text = _mapping(data.get("text", {}), f"{where}: text")
            sizes = allowed.get("sizes")
            if not isinstance(sizes, list) or not all(
                isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_pos_int(v) for v in s) for s in sizes
            ):
                raise ConfigError(f"{where}: allowed.sizes: {sizes!r} not allowed (allowed: a list of [height, width])")
            frames = allowed.get("frames")
            if not isinstance(frames, list) or not all(_is_pos_int(f) for f in frames):
                raise ConfigError(f"{where}: allowed.frames: {frames!r} not allowed (allowed: a list of positive integers)")
            return cls(
                name=str(data.get("name", "")),
                description=str(data.get("description", "")),
                weights_default=weights.get("default"),
                weights_official=weights.get("official"),
                dtype_cuda=str(dtype.get("cuda", "float16")),
                dtype_cpu=str(dtype.get("cpu", "float32")),
                sampling=SamplingDefaults(
                    steps=_typed(sampling["steps"], int, f"{where}: sampling.steps"),
                    guidance=float(_typed(sampling["guidance"], (int, float), f"{where}: sampling.guidance")),
                    frames=_typed(sampling["frames"], int, f"{where}: sampling.frames"),
                    height=_typed(sampling["height"], int, f"{where}: sampling.height"),
                    width=_typed(sampling["width"], int, f"{where}: sampling.width"),
                    fps=_typed(sampling["fps"], int, f"{where}: sampling.fps"),
                    negative_prompt=str(sampling.get("negative_prompt", "") or ""),
                    seed=_typed(sampling.get("seed", 0), int, f"{where}: sampling.seed"),
                ),
                text_max_length=_typed(text.get("max_length", 120), int, f"{where}: text.max_length"),
                allowed=AllowedSizes(frames=tuple(frames), sizes=tuple((int(h), int(w)) for h, w in sizes)),
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
