"""Reading a batch config: the YAML file, dotted ``key=value`` overrides, OmegaConf interpolation, and the
schema check. Everything wrong is collected, not raised one at a time."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BatchConfigError
from .schema import BatchConfig, check_against

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass
class LoadedConfig:
    """A schema-checked config, the folder its relative input paths are resolved against, and the errors
    found so far (the config then holds defaults where the bad values were)."""

    config: BatchConfig
    base_dir: Path
    source: str | None = None
    errors: list[str] = field(default_factory=list)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"sampling.steps=2"`` -> (["sampling", "steps"], 2); ``prompts[1].seed=5`` or ``prompts.1.seed=5``
    address list items. The value is read as YAML (``null``, ``[1, 2]``, ``'007'``)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {text!r}: expected key=value (e.g. sampling.steps=2)")
    path: list[str | int] = []
    pos = 0
    for match in _SEGMENT.finditer(key):
        if match.start() != pos and key[pos:match.start()] != ".":
            raise ValueError(f"override {text!r}: malformed key {key!r}")
        name, index = match.groups()
        path.append(int(index) if index is not None else (int(name) if name.isdigit() else name))
        pos = match.end()
    if pos != len(key) or not path:
        raise ValueError(f"override {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and value and all(v is None for v in value.values()):
        value = raw  # "{index}-{slug}" is a file-name template, not a YAML mapping of nulls
    return path, value


def apply_override(data: dict[str, Any], path: Sequence[str | int], value: Any, text: str) -> None:
    """Set ``value`` at ``path`` inside ``data`` (creating mappings on the way; list items must exist)."""
    node: Any = data
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not isinstance(key, int) or not -len(node) <= key < len(node):
                raise ValueError(f"override {text!r}: {key!r} is not an index of a list of {len(node)}")
            if last:
                node[key] = value
            else:
                if path[0] == "prompts" and i == 1 and isinstance(node[key], str):
                    node[key] = {"prompt": node[key]}  # prompts[0].seed=5 on a plain prompt string
                node = node[key]
        elif isinstance(node, dict):
            key = str(key)
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            where = ".".join(map(str, path[:i]))
            raise ValueError(f"override {text!r}: {where} is {node!r}, not a mapping or list")  # noqa: TRY004 - bad input, reported with the others


def read_config_data(path: str | Path | None, data: Mapping[str, Any] | None = None,
                     overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """The config as plain data, after overrides and ``${...}`` interpolation, and the errors so far."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    errors: list[str] = []
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BatchConfigError([f"config: file {str(p)!r} does not exist"], str(p))
        try:
            raw = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
        except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as exc:
            raise BatchConfigError([f"config: {p} is not valid YAML: {_first_line(exc)}"], str(p)) from None
        if raw is None:
            raw = {}
    if data is not None:
        raw = OmegaConf.to_container(OmegaConf.create(dict(data)), resolve=False)
    if not isinstance(raw, dict):
        raise BatchConfigError([f"config: {raw!r} not allowed (allowed: a mapping at the top level)"],
                               None if path is None else str(path))
    for text in overrides:
        try:
            key_path, value = parse_override(text)
            apply_override(raw, key_path, value, text)
        except ValueError as exc:
            errors.append(str(exc))
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException:
        resolved = _resolve_leaves(raw, errors)
    return resolved, errors


def _resolve_leaves(raw: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """Resolve ``${...}`` value by value, so each one that fails is reported under its own path and left out."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .schema import join

    root = OmegaConf.create(raw)
    failed = object()

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, (dict, list)):
            pairs = node.items() if isinstance(node, dict) else enumerate(node)
            done = [(k, walk(v, join(where, k if isinstance(k, int) else str(k)))) for k, v in pairs]
            kept = [(k, v) for k, v in done if v is not failed]
            return dict(kept) if isinstance(node, dict) else [v for _, v in kept]
        if not (isinstance(node, str) and "${" in node):
            return node
        try:  # OmegaConf.select reads the same dotted / [i] path syntax
            return OmegaConf.select(root, where, throw_on_resolution_failure=True)
        except OmegaConfBaseException as exc:
            errors.append(f"{where}: {node!r}: interpolation failed ({_first_line(exc)})")
            return failed

    return walk(raw, "")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                data: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Read and schema-check a batch config (a YAML ``path`` or a mapping ``data``) with dotted overrides.
    Errors are collected in the result, not raised (except a missing or unreadable file)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    resolved, errors = read_config_data(path, data, overrides)
    clean, schema_errors = check_against(BatchConfig, resolved)
    errors.extend(schema_errors)
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BatchConfig), clean))
    except OmegaConfBaseException as exc:  # the checker should have caught it; never lose the message
        errors.append(f"config: {_first_line(exc)}")
        config = BatchConfig()
    assert isinstance(config, BatchConfig)
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    return LoadedConfig(config=config, base_dir=base_dir, source=None if path is None else str(path), errors=errors)


def load_batch_config(path: str | Path, overrides: Sequence[str] = ()) -> BatchConfig:
    """Read a batch config and check its schema; raise :class:`BatchConfigError` listing every problem.
    (Checks against the model and the prompts happen in :func:`videosys.batch.prepare_batch`.)"""
    loaded = load_config(path, overrides)
    if loaded.errors:
        raise BatchConfigError(loaded.errors, loaded.source)
    return loaded.config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
