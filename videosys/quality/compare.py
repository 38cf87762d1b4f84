"""Comparing two sets of videos: PSNR and SSIM per matched pair and their means (``videosys compare``).

``A`` and ``B`` are each one of

- a **video**: an .mp4/.gif file or a folder of PNG frames -> one pair;
- a **folder of videos** (files and PNG-frame subfolders): pairs matched by name without the suffix
  (``cat.mp4`` in A with ``cat.gif`` or ``cat/`` in B);
- a **batch manifest** (``.jsonl``, as ``videosys batch`` writes it): item records (other record types are
  skipped) or plain lines, each with at least ``prompt``, ``seed`` and ``output`` (the video's path; relative
  paths are taken from the manifest's folder, else the working directory). Lines are matched by
  ``(prompt, seed, variant)``, ``variant`` (or ``variant_index``) being optional; the latest line of a key
  decides, and only a ``status`` of ``"done"`` (or none) counts.

This is the paper's protocol: each PAB video against the original (PAB off) video with the same prompt and seed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .metrics import check_pair, psnr, ssim
from .video import VIDEO_SUFFIXES, is_frame_folder, is_video_path, read_video

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class VideoPair:
    name: str
    a: Path
    b: Path


@dataclass(frozen=True)
class PairScore:
    name: str
    a: Path
    b: Path
    frames: int
    width: int
    height: int
    psnr: float
    ssim: float


@dataclass
class CompareReport:
    """Scores per pair, their means, and the videos of either side that found no partner."""

    pairs: list[PairScore]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        """Mean PSNR over the pairs (``inf`` if any pair is identical)."""
        return sum(p.psnr for p in self.pairs) / len(self.pairs)

    @property
    def mean_ssim(self) -> float:
        return sum(p.ssim for p in self.pairs) / len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | str:
            return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")

        return {
            "pairs": [{"name": p.name, "a": str(p.a), "b": str(p.b), "frames": p.frames, "width": p.width,
                       "height": p.height, "psnr": num(p.psnr), "ssim": p.ssim} for p in self.pairs],
            "mean": {"psnr": num(self.mean_psnr), "ssim": self.mean_ssim, "count": len(self.pairs)},
            "only_a": self.only_a,
            "only_b": self.only_b,
        }

    def table(self) -> str:
        width = max([4, *(len(p.name) for p in self.pairs)])
        lines = [f"{'name':<{width}}  {'frames':>6}  {'size':>9}  {'PSNR dB':>8}  {'SSIM':>7}"]
        for p in self.pairs:
            lines.append(f"{p.name:<{width}}  {p.frames:>6}  {f'{p.width}x{p.height}':>9}  {p.psnr:>8.3f}  {p.ssim:>7.4f}")
        lines.append(f"{f'mean ({len(self.pairs)})':<{width}}  {'':>6}  {'':>9}  {self.mean_psnr:>8.3f}  {self.mean_ssim:>7.4f}")
        if self.only_a or self.only_b:
            lines.append(f"unmatched: {len(self.only_a)} only in A, {len(self.only_b)} only in B")
        return "\n".join(lines)


def _kind(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"compare: {str(path)!r} does not exist")
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest"
    if is_video_path(path):
        return "video"
    if path.is_dir():
        return "folder"
    raise ValueError(f"compare: {str(path)!r} is not a video ({', '.join(VIDEO_SUFFIXES)} or a PNG-frame folder), "
                     "a folder of videos or a .jsonl batch manifest")


def folder_videos(folder: Path) -> dict[str, Path]:
    """The videos of a folder by name without suffix (files with a video suffix, PNG-frame subfolders)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or is_frame_folder(p):
            key = p.stem if p.is_file() else p.name
            if key in found:
                raise ValueError(f"compare: {str(folder)!r} holds two videos named {key!r} ({found[key].name}, {p.name})")
            found[key] = p
    if not found:
        raise ValueError(f"compare: {str(folder)!r} holds no videos ({', '.join(VIDEO_SUFFIXES)} or PNG-frame folders)")
    return found


def read_manifest(path: Path) -> dict[tuple[str, int, Any], Path]:
    """The finished videos of a batch manifest by ``(prompt, seed, variant)``.

    Reads the manifest ``videosys batch`` writes (records with ``"type": "item"``; other record types such as
    ``"run"`` are skipped) as well as plain lines with ``prompt``, ``seed``, ``output`` and optionally
    ``status`` and ``variant``/``variant_index``. The latest record of a key decides: a later failed record
    drops an earlier finished one. An unreadable line (a write cut short by a crash) is skipped with a warning.
    """
    entries: dict[tuple[str, int, Any], Path] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            logger.warning("compare: %s:%d is not valid JSON (%s); line skipped", path, n, exc.msg)
            continue
        if not isinstance(row, dict):
            raise ValueError(f"compare: {path}:{n} is not a JSON object")  # noqa: TRY004 - bad input, exit 2
        if row.get("type", "item") != "item":
            continue
        missing = [k for k in ("prompt", "seed") if row.get(k) is None]
        if missing:
            raise ValueError(f"compare: {path}:{n} lacks {', '.join(missing)} (a manifest line needs prompt, seed, output)")
        variant = row.get("variant", row.get("variant_index"))
        key = (str(row["prompt"]), int(row["seed"]), variant)
        if row.get("status", "done") != "done":
            entries.pop(key, None)
            continue
        if row.get("output") is None:
            raise ValueError(f"compare: {path}:{n} lacks output (a manifest line needs prompt, seed, output)")
        out = Path(row["output"])
        if not out.is_absolute():
            beside = path.parent / out
            out = beside if beside.exists() or not out.exists() else out
        if key in entries:
            logger.info("compare: %s:%d repeats prompt %r seed %s; the later line wins", path, n, key[0], key[1])
        entries[key] = out
    if not entries:
        raise ValueError(f"compare: {path} has no finished videos (lines with status 'done')")
    return entries


def _key_name(key: tuple[str, int, Any]) -> str:
    prompt, seed, variant = key
    return f"{prompt[:40]} (seed {seed}" + (f", variant {variant})" if variant is not None else ")")


def match(a: str | Path, b: str | Path) -> tuple[list[VideoPair], list[str], list[str]]:
    """Pairs of videos to compare, and the names found only in A / only in B."""
    a, b = Path(a), Path(b)
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise ValueError(f"compare: A is a {ka} and B is a {kb}; compare two videos, two folders or two manifests")
    if ka == "video":
        return [VideoPair(name=a.name, a=a, b=b)], [], []
    if ka == "folder":
        va, vb = folder_videos(a), folder_videos(b)
        names = {k: k for k in va}
    else:
        va, vb = read_manifest(a), read_manifest(b)  # type: ignore[assignment]
        names = {k: _key_name(k) for k in va}  # type: ignore[misc]
    common = [k for k in va if k in vb]
    only_a = [names[k] for k in va if k not in vb]
    only_b = [(_key_name(k) if ka == "manifest" else k) for k in vb if k not in va]  # type: ignore[arg-type]
    if not common:
        raise ValueError(f"compare: no video of {str(a)!r} matches one of {str(b)!r} "
                         f"({len(va)} and {len(vb)} videos; matched by {'name' if ka == 'folder' else 'prompt and seed'})")
    if only_a or only_b:
        logger.warning("compare: %d video(s) only in A, %d only in B; they are left out", len(only_a), len(only_b))
    return [VideoPair(name=names[k], a=va[k], b=vb[k]) for k in common], only_a, only_b


def score_pair(pair: VideoPair) -> PairScore:
    """PSNR and SSIM of one pair (reads both videos; a missing file or a mismatch is a clear error)."""
    va, vb = read_video(pair.a), read_video(pair.b)
    check_pair(va, vb, names=(str(pair.a), str(pair.b)))
    return PairScore(name=pair.name, a=pair.a, b=pair.b, frames=int(va.shape[0]), width=int(va.shape[2]),
                     height=int(va.shape[1]), psnr=psnr(va, vb), ssim=ssim(va, vb))


def compare(a: str | Path, b: str | Path, progress: bool = True) -> CompareReport:
    """Compare two videos, two folders of videos or two batch manifests (see the module docstring)."""
    pairs, only_a, only_b = match(a, b)
    scores = [score_pair(p) for p in tqdm(pairs, desc="compare", disable=not progress or len(pairs) < 2, leave=False)]
    return CompareReport(pairs=scores, only_a=only_a, only_b=only_b)
