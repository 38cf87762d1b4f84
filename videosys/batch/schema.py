"""The batch config schema: OmegaConf structured-config dataclasses, and a checker that lists every unknown
key and wrong type at once with its YAML path (OmegaConf itself stops at the first problem).

Documented in docs/configuration.md ("Batch config"); examples in configs/batch/.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

#: Output formats: a video file per item, or a folder of PNG frames per item.
FORMATS: tuple[str, ...] = ("mp4", "gif", "png")

#: Fields a file-name template may use.
NAME_FIELDS: tuple[str, ...] = ("index", "prompt_index", "variant", "seed", "slug", "name", "model")


@dataclass
class ModelSection:
    """Which model runs: a registered name, a checkpoint folder or hub id (``None``: the model's bundled
    default), the device/dtype (``None``: the engine's defaults), and the engine's speed/memory options
    (``compile``: torch.compile of the denoiser's block pieces; ``offload_text_encoder``: the text encoder in
    host memory between prompts; ``fused_kernels``: ``false`` keeps the torch path where a fused Triton kernel
    would apply; ``float8``: float8 block linears where they apply; ``cuda_graphs``: ``false`` runs every
    denoiser call eagerly instead of replaying CUDA graphs where the GPU waits on the host)."""

    name: str = "latte"
    weights: str | None = None
    device: str | None = None
    dtype: str | None = None
    compile: bool = False
    offload_text_encoder: bool = False
    fused_kernels: bool = True
    float8: bool = False
    cuda_graphs: bool = True


@dataclass
class SamplingSection:
    """Defaults of every prompt (``None``: the model's default). ``seed`` is the base seed: an item without
    its own seed gets ``seed + item index``."""

    steps: int | None = None
    guidance: float | None = None
    frames: int | str | None = None
    height: int | None = None
    width: int | None = None
    resolution: str | None = None
    aspect: str | None = None
    fps: int | None = None
    negative_prompt: str | None = None
    seed: int = 0


@dataclass
class ParallelSection:
    """The worker pool (see VideoSysEngine): ``world_size`` ranks, ``sp`` of them per request, ``cfg_parallel``
    doubling that; the rest serve other prompts at the same time. ``ray_address`` joins a Ray cluster."""

    world_size: int = 1
    sp: int = 1
    cfg_parallel: bool = False
    ray_address: str | None = None


@dataclass
class OutputSection:
    """Where videos go: ``dir`` (relative to the working directory), a file-name template (fields
    :data:`NAME_FIELDS`, no suffix), the format, and the manifest (default ``<dir>/manifest.jsonl``)."""

    dir: str = "outputs/batch"
    name: str = "{index:04d}-{slug}"
    format: str = "mp4"
    manifest: str | None = None


@dataclass
class BatchConfig:
    """A whole batch. Prompts come from ``prompts`` (inline: strings or mappings with overrides), from
    ``prompts_file`` (.txt, .jsonl or .csv, relative to the config file), or both (inline first)."""

    model: ModelSection = field(default_factory=ModelSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    pab: Any = None
    parallel: ParallelSection = field(default_factory=ParallelSection)
    prompts: list[Any] = field(default_factory=list)
    prompts_file: str | None = None
    videos_per_prompt: int = 1
    output: OutputSection = field(default_factory=OutputSection)
    fail_fast: bool = False


@dataclass
class PromptEntry:
    """One prompt with its own overrides (all optional but ``prompt``). ``name`` feeds the ``{name}`` field of
    the file-name template; ``videos`` overrides ``videos_per_prompt``."""

    prompt: str = ""
    name: str | None = None
    seed: int | None = None
    frames: int | str | None = None
    height: int | None = None
    width: int | None = None
    resolution: str | None = None
    aspect: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: int | None = None
    pab: Any = None
    videos: int | None = None


#: Keys of a prompt entry that are request overrides (the rest: prompt, name, videos).
REQUEST_KEYS: tuple[str, ...] = ("seed", "frames", "height", "width", "resolution", "aspect", "negative_prompt",
                                 "steps", "guidance", "fps", "pab")


def join(where: str, key: str | int) -> str:
    """The YAML path of ``key`` under ``where``: ``a.b``, ``a[3]``; a file location (``p.csv:3``) takes ``: key``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not where:
        return key
    return f"{where}: {key}" if where.endswith(":") or _is_file_location(where) else f"{where}.{key}"


def _is_file_location(where: str) -> bool:
    head, _, line = where.rpartition(":")
    return bool(head) and line.isdigit()


_UNIONS = (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp):
            names.append("null")
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp)


def check_against(schema: type, data: Any, where: str = "") -> tuple[dict[str, Any], list[str]]:
    """Check ``data`` (plain dicts/lists) against a schema dataclass. Returns the data with every bad key and
    value removed (so OmegaConf can merge the rest) and the errors, each ``<path>: <problem>``."""
    errors: list[str] = []
    if not isinstance(data, dict):
        errors.append(f"{where or 'config'}: {data!r} not allowed (allowed: a mapping)")
        return {}, errors
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    clean: dict[str, Any] = {}
    for key, value in data.items():
        path = join(where, str(key))
        if key not in hints:
            errors.append(f"{path}: unknown key (allowed: {', '.join(names)})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            clean[key], sub = check_against(tp, value, path)
            errors.extend(sub)
        elif _matches(value, tp):
            clean[key] = value
        else:
            errors.append(f"{path}: {value!r} not allowed (allowed: {_type_name(tp)})")
    return clean, errors
