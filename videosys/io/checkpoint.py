"""Finding a checkpoint folder: a local folder, the model's bundled default, or a hub id (only when online).

Offline, a missing checkpoint is an error that names the folder or files that are missing and how to
provide them; nothing is downloaded behind the user's back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..config import project_root
from ..errors import WeightsNotFoundError

logger = logging.getLogger(__name__)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~")) and "\\" not in text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_layout(folder: Path, components: Sequence[str], what: str) -> Path:
    """Every component subfolder must exist; the error lists all that are missing."""
    missing = [c for c in components if not (folder / c).is_dir()]
    if missing:
        raise WeightsNotFoundError(
            f"weights: {str(folder)!r} is not a complete {what} checkpoint: missing folder(s) "
            f"{', '.join(m + '/' for m in missing)} (expected {', '.join(c + '/' for c in components)})"
        )
    return folder


def download_hint(official: str | Mapping[str, str] | None, folder: str | None = None) -> str:
    """How to get the official weights into a local folder: one hub repository, or one per component
    subfolder (the component ``"."`` is a repository that goes to the folder's root)."""
    if not official:
        return "pass --weights with a local checkpoint folder"
    if isinstance(official, str):
        name = folder or official.split("/")[-1]
        return (f"download it where there is network (`hf download {official} --local-dir models/{name}`) "
                f"and pass --weights models/{name}")
    name = folder or "checkpoint"
    steps = "; ".join(
        f"`hf download {repo} --local-dir models/{name}{'' if part == '.' else '/' + part}`" for part, repo in official.items()
    )
    return f"download its parts where there is network ({steps}) and pass --weights models/{name}"


def resolve_checkpoint(
    weights: str | os.PathLike[str] | None,
    *,
    default: str | None,
    official: str | Mapping[str, str] | None,
    components: Sequence[str],
    what: str,
) -> Path:
    """Return the local folder of a checkpoint.

    ``weights=None`` takes the model's ``default`` (a path relative to the project root, or a hub id).
    A hub id is fetched with huggingface_hub only when online (``HF_HUB_OFFLINE`` unset); offline the
    local hub cache is used if it holds the snapshot.
    """
    hint = download_hint(official, what if not isinstance(official, str) else None)
    if weights is None:
        if default is None:
            raise WeightsNotFoundError(f"weights: none given and {what} has no default checkpoint; {hint}")
        candidate = project_root() / default
        if candidate.is_dir():
            return check_layout(candidate, components, what)
        if not _looks_like_hub_id(default):
            raise WeightsNotFoundError(
                f"weights: the default checkpoint folder {str(candidate)!r} is missing; "
                "regenerate the bundled smoke model with `python scripts/make_smoke_checkpoint.py`, or " + hint
            )
        weights = default
    text = os.fspath(weights)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsNotFoundError(f"weights: {text!r} is a file; expected a checkpoint folder")
        return check_layout(path, components, what)
    if not _looks_like_hub_id(text):
        raise WeightsNotFoundError(f"weights: folder {text!r} does not exist; {hint}")
    return check_layout(_from_hub(text, hint), components, what)


def _from_hub(repo_id: str, hint: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise WeightsNotFoundError(f"weights: {repo_id!r} is not a local folder and huggingface_hub is missing; {hint}") from None
    offline = _offline()
    try:
        logger.info("resolving %s from the hub%s", repo_id, " cache (offline)" if offline else "")
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - every failure means the same thing to the user
        reason = "offline (HF_HUB_OFFLINE is set) and not in the local hub cache" if offline else f"download failed: {type(exc).__name__}: {exc}"
        raise WeightsNotFoundError(f"weights: {repo_id!r} is not a local folder and {reason}; {hint}") from None
