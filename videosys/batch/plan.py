"""From a checked config to the list of items (one video each): the engine, every request built and validated
against the model, seeds, output paths. Every problem is collected with its YAML path.

Seeds: an item of a prompt that gives ``seed: s`` gets ``s + variant`` (its videos 0, 1, ... of
``videos_per_prompt``); any other item gets ``sampling.seed + index``, ``index`` counting all items of the
batch from 0 in order (prompts in order, each prompt's variants together). Items of one prompt therefore
always get distinct seeds, and a rerun of the same config gets the same seeds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .outputs import check_template, output_path, render_name, slugify
from .prompts import PromptSpec
from .schema import FORMATS, BatchConfig, join

if TYPE_CHECKING:
    from ..engine import VideoSysEngine
    from ..request import GenerationRequest

_SIZE_KEYS = ("height", "width")
_NAMED_SIZE_KEYS = ("resolution", "aspect")
#: a RequestError field -> the override keys that produced it
_FIELD_KEYS: dict[str, tuple[str, ...]] = {"height x width": _SIZE_KEYS}


@dataclass(frozen=True)
class BatchItem:
    """One video of the batch. ``key`` (the output path relative to the output folder) identifies it in the
    manifest; ``request_hash`` fingerprints what it would generate (model, weights, request)."""

    index: int
    prompt_index: int
    variant: int
    origin: str
    request: GenerationRequest
    key: str
    path: Path
    request_hash: str


@dataclass
class Plan:
    items: list[BatchItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def item_seed(spec: PromptSpec, base_seed: int, index: int, variant: int) -> int:
    """The seed rule (module docstring): the entry's seed + variant, else the base seed + item index."""
    own = spec.overrides.get("seed")
    return own + variant if own is not None else base_seed + index


def request_hash(model: str, weights: str, request: GenerationRequest) -> str:
    blob = json.dumps({"model": model, "weights": weights, "request": request.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_input_path(value: Any, base_dir: Path) -> Any:
    """A relative path string that exists under ``base_dir`` (the config's folder) becomes that path; anything
    else (a preset name, a hub id, a missing file) is returned unchanged."""
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        candidate = base_dir / value
        if candidate.exists():
            return str(candidate)
    return value


def resolve_pab_setting(value: Any, engine: VideoSysEngine, base_dir: Path, where: str) -> tuple[Any, str | None]:
    """(PABConfig, None) or (None, error) for a config or entry ``pab`` value."""
    from ..pab import PABConfigError, resolve_pab

    if isinstance(value, Mapping) and "preset" in value:  # {preset: NAME or YAML path, cache: FORMAT}
        value = {**value, "preset": resolve_input_path(value["preset"], base_dir)}
    try:
        return resolve_pab(resolve_input_path(value, base_dir), engine.config.pab), None
    except PABConfigError as exc:
        msg = str(exc).splitlines()[0]
        if not msg.startswith(("pab:", "pab.")):
            msg = f"pab: {msg}"
        return None, join(where, msg) if where else msg


def _sampling_overrides(config: BatchConfig) -> dict[str, Any]:
    s = config.sampling
    keys = ("steps", "guidance", "frames", "height", "width", "resolution", "aspect", "fps", "negative_prompt")
    return {k: getattr(s, k) for k in keys if getattr(s, k) is not None}


def _merge(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """Entry overrides over the sampling defaults; an entry's size (height/width or resolution/aspect) replaces
    the defaults' size of either kind."""
    merged = dict(base)
    if any(k in own for k in _SIZE_KEYS + _NAMED_SIZE_KEYS):
        for k in _SIZE_KEYS + _NAMED_SIZE_KEYS:
            merged.pop(k, None)
    merged.update(own)
    return merged


def build_checked_request(engine: VideoSysEngine, prompt: str, base: dict[str, Any], own: dict[str, Any],
                          seed: int, where: str, seed_where: str, errors: list[str]) -> GenerationRequest | None:
    """Build a request, naming every bad field at once: after each RequestError the keys behind it are dropped
    and the request is built again. A field the entry gave is reported under ``where``, one from the sampling
    defaults under ``sampling``."""
    from ..errors import RequestError

    base, own = dict(base), dict(own)
    failed = False
    for _ in range(len(base) + len(own) + 2):
        try:
            request = engine.make_request(prompt, **_merge(base, own), seed=seed)
            return None if failed else request
        except RequestError as exc:
            failed = True
            keys = _FIELD_KEYS.get(exc.field, (exc.field,))
            if any(k in own for k in keys):
                path = join(where, exc.field)
                for k in keys:
                    own.pop(k, None)
            elif any(k in base for k in keys):
                path = join("sampling", exc.field)
                for k in keys:
                    base.pop(k, None)
            elif exc.field == "seed":
                errors.append(f"{seed_where}: {exc.value!r} not allowed (allowed: {exc.allowed})")
                return None
            else:  # the prompt itself, or a default of the model
                errors.append(f"{join(where, exc.field)}: {exc.value!r} not allowed (allowed: {exc.allowed})")
                return None
            errors.append(f"{path}: {exc.value!r} not allowed (allowed: {exc.allowed})")
    return None


def plan_items(config: BatchConfig, specs: list[PromptSpec], engine: VideoSysEngine, base_dir: Path) -> Plan:
    """Every item of the batch, or the errors that stop it."""
    plan = Plan()
    errors = plan.errors
    out = config.output
    fmt_ok = out.format in FORMATS
    if not fmt_ok:
        errors.append(f"output.format: {out.format!r} not allowed (allowed: {', '.join(FORMATS)})")
    template_problem = check_template(out.name)
    if template_problem:
        errors.append(f"output.name: {template_problem}")
    if config.videos_per_prompt < 1:
        errors.append(f"videos_per_prompt: {config.videos_per_prompt} not allowed (allowed: an integer >= 1)")
    default_pab, problem = resolve_pab_setting(config.pab, engine, base_dir, "")
    if problem:
        errors.append(problem)
    base = _sampling_overrides(config)
    base_seed = config.sampling.seed
    # the defaults on their own, so a bad default is reported once under sampling
    build_checked_request(engine, "a prompt", base, {}, base_seed, "sampling", "sampling.seed", errors)
    folder = Path(out.dir).expanduser()
    seen: dict[str, str] = {}
    index = 0
    for p, spec in enumerate(specs):
        videos = spec.videos if spec.videos is not None else max(config.videos_per_prompt, 1)
        if videos < 1:
            errors.append(f"{join(spec.origin, 'videos')}: {videos} not allowed (allowed: an integer >= 1)")
            continue
        own = {k: v for k, v in spec.overrides.items() if k != "seed"}
        if "pab" in own:
            own["pab"], problem = resolve_pab_setting(own["pab"], engine, base_dir, spec.origin)
            if problem:
                errors.append(problem)
                own.pop("pab")
        elif default_pab is not None:
            own["pab"] = default_pab
        for variant in range(videos):
            seed = item_seed(spec, base_seed, index, variant)
            seed_where = join(spec.origin, "seed") if "seed" in spec.overrides else "sampling.seed"
            request = build_checked_request(engine, spec.prompt, base, own, seed, spec.origin, seed_where, errors)
            if request is not None and not template_problem and fmt_ok:
                name = render_name(out.name, {
                    "index": index, "prompt_index": p, "variant": variant, "seed": seed,
                    "slug": slugify(spec.prompt), "name": _safe_name(spec.name) if spec.name else slugify(spec.prompt),
                    "model": engine.model,
                })
                path = output_path(folder, name, out.format)
                key = path.relative_to(folder).as_posix()
                if key in seen:
                    errors.append(f"output.name: {out.name!r} gives {key!r} for both {seen[key]} and {spec.origin}"
                                  f"{f' (video {variant})' if videos > 1 else ''}; add {{index}} or {{variant}}")
                else:
                    seen[key] = spec.origin
                    plan.items.append(BatchItem(
                        index=index, prompt_index=p, variant=variant, origin=spec.origin, request=request, key=key,
                        path=path, request_hash=request_hash(engine.model, str(engine.checkpoint), request),
                    ))
            index += 1
    return plan


def _safe_name(name: str) -> str:
    """A user's ``name`` as one path component: only letters, digits, ``.``, ``_``, ``-``."""
    return re.sub(r"[^\w.-]+", "-", name).strip(".-") or "video"
