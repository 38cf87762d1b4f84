"""Prompt sources: inline entries of the config and a prompts file (.txt, .jsonl or .csv), each entry a prompt
with optional per-prompt overrides. Each entry remembers where it came from (``prompts[3]`` or
``prompts.csv:4``, file and line) so errors point at it."""

from __future__ import annotations

import csv
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import REQUEST_KEYS, BatchConfig, PromptEntry, check_against, join

PROMPT_FILE_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".csv")


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of the batch: its text, the request overrides it gives itself, its ``name`` for the
    file-name template, how many videos it wants (``None``: ``videos_per_prompt``) and where it came from."""

    origin: str
    prompt: str
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    videos: int | None = None


def read_prompts(config: BatchConfig, base_dir: Path) -> tuple[list[PromptSpec], list[str]]:
    """All prompts, inline ones first, then the file's; and the errors found (bad entries are left out)."""
    specs: list[PromptSpec] = []
    errors: list[str] = []
    for i, entry in enumerate(config.prompts):
        spec = _entry(entry, join("prompts", i), errors)
        if spec is not None:
            specs.append(spec)
    if config.prompts_file is not None:
        specs.extend(read_prompts_file(config.prompts_file, base_dir, errors))
    if not specs and not errors:
        errors.append("prompts: no prompts (give a list under prompts, or a prompts_file)")
    return specs, errors


def read_prompts_file(name: str, base_dir: Path, errors: list[str]) -> list[PromptSpec]:
    """Entries of a .txt (one prompt a line; blank lines and ``#`` comments skipped), .jsonl (one JSON string or
    object a line) or .csv (a header with a ``prompt`` column and any override columns) file. ``name`` is
    relative to ``base_dir`` (the config file's folder) unless absolute."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        errors.append(f"prompts_file: suffix {suffix or '(none)'!r} of {name!r} not allowed "
                      f"(allowed: {', '.join(PROMPT_FILE_SUFFIXES)})")
        return []
    if not path.is_file():
        errors.append(f"prompts_file: file {name!r} does not exist (looked for {str(path)!r})")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"prompts_file: cannot read {name!r}: {exc}")
        return []
    before = len(errors)
    if suffix == ".txt":
        specs = [PromptSpec(origin=f"{name}:{n}", prompt=line.strip())
                 for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    elif suffix == ".jsonl":
        specs = _read_jsonl(text, name, errors)
    else:
        specs = _read_csv(text, name, errors)
    if not specs and len(errors) == before:
        errors.append(f"prompts_file: {name!r} holds no prompts")
    return specs


def _read_jsonl(text: str, name: str, errors: list[str]) -> list[PromptSpec]:
    specs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        spec = _entry(entry, where, errors)
        if spec is not None:
            specs.append(spec)
    return specs


def _read_csv(text: str, name: str, errors: list[str]) -> list[PromptSpec]:
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    allowed = [f.name for f in dataclasses.fields(PromptEntry)]
    if "prompt" not in columns:
        errors.append(f"{name}:1: header {columns!r} has no 'prompt' column (allowed columns: {', '.join(allowed)})")
        return []
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        errors.append(f"{name}:1: unknown column(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})")
    hints = typing.get_type_hints(PromptEntry)
    specs = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if None in row:  # more cells than header columns
            errors.append(f"{where}: {len(columns) + len(row[None])} cells but the header has {len(columns)} columns")
            continue
        entry = {k.strip(): _csv_value(v.strip(), hints[k.strip()]) for k, v in row.items()
                 if k is not None and k.strip() in hints and v is not None and v.strip() != ""}
        if not entry:
            continue
        spec = _entry(entry, where, errors)
        if spec is not None:
            specs.append(spec)
    return specs


def _csv_value(text: str, tp: Any) -> Any:
    """A CSV cell typed after the entry field (a cell that does not convert stays text and fails the check)."""
    args = typing.get_args(tp)
    try:
        if int in args and (float not in args) and text.lstrip("-").isdigit():
            return int(text)
        if float in args:
            return float(text)
    except ValueError:
        pass
    return text


def _entry(entry: Any, where: str, errors: list[str]) -> PromptSpec | None:
    if isinstance(entry, str):
        if not entry.strip():
            errors.append(f"{where}: {entry!r} not allowed (allowed: a non-empty prompt)")
            return None
        return PromptSpec(origin=where, prompt=entry)
    if not isinstance(entry, dict):
        errors.append(f"{where}: {entry!r} not allowed (allowed: a prompt string, or a mapping with a prompt "
                      "and overrides)")
        return None
    clean, problems = check_against(PromptEntry, entry, where)
    errors.extend(problems)
    prompt = clean.get("prompt")
    if "prompt" not in entry:
        errors.append(f"{join(where, 'prompt')}: missing (every entry needs a prompt)")
    elif isinstance(prompt, str) and not prompt.strip():
        errors.append(f"{join(where, 'prompt')}: {prompt!r} not allowed (allowed: a non-empty prompt)")
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    overrides = {k: clean[k] for k in REQUEST_KEYS if clean.get(k) is not None}
    return PromptSpec(origin=where, prompt=prompt, overrides=overrides, name=clean.get("name"),
                      videos=clean.get("videos"))
