"""Output files of a batch: names from the template, and whether a file on disk is a complete video.

"Complete" is cheap to check and does not decode: the size matches what the manifest recorded, and the
frame count read from the container matches too (MP4: the video track's sample count in ``moov``, after
checking the top-level boxes tile the file exactly, which a truncated file fails; GIF: Pillow's frame
count; PNG folder: the number of ``frame_*.png`` files, their sizes summed).
"""

from __future__ import annotations

import os
import re
import string
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .schema import FORMATS, NAME_FIELDS

_SAMPLE_FIELDS: dict[str, Any] = {"index": 0, "prompt_index": 0, "variant": 0, "seed": 0, "slug": "a-prompt",
                                  "name": "a-prompt", "model": "latte"}


def slugify(text: str, limit: int = 48) -> str:
    """Lower-case ASCII words joined by ``-``, at most ``limit`` characters (``"video"`` if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"


def check_template(template: str) -> str | None:
    """Why the file-name template cannot be used, or ``None``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"{template!r} is not a valid template ({exc})"
    unknown = [f for f in fields if f not in NAME_FIELDS]
    if unknown:
        return f"{template!r}: field {{{unknown[0]}}} not allowed (allowed: {', '.join('{' + f + '}' for f in NAME_FIELDS)})"
    try:
        name = template.format(**_SAMPLE_FIELDS)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return f"{template!r} is not a valid template ({exc})"
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts or name.endswith(("/", os.sep)):
        return f"{template!r} must give a relative file name inside output.dir (no '..', no leading '/')"
    return None


def render_name(template: str, fields: Mapping[str, Any]) -> str:
    return template.format(**fields)


def output_path(folder: Path, name: str, fmt: str) -> Path:
    """The path an item is written to: ``<folder>/<name>.mp4`` / ``.gif``, or the folder ``<folder>/<name>``
    for PNG frames."""
    if fmt not in FORMATS:
        raise ValueError(f"output.format: {fmt!r} not allowed (allowed: {', '.join(FORMATS)})")
    return folder / name if fmt == "png" else folder / f"{name}.{fmt}"


def _size(path: Path, fmt: str) -> int:
    if fmt == "png":
        return sum(f.stat().st_size for f in path.glob("frame_*.png"))
    return path.stat().st_size


def _frames(path: Path, fmt: str) -> int:
    if fmt == "png":
        return len(list(path.glob("frame_*.png")))
    return mp4_frame_count(path) if fmt == "mp4" else gif_frame_count(path)


def measure(path: Path, fmt: str) -> tuple[int, int]:
    """(bytes, frames) of a written output; raises when it is not readable."""
    return _size(path, fmt), _frames(path, fmt)


def incomplete_reason(path: Path, fmt: str, size: Any, frames: Any) -> str | None:
    """Why ``path`` is not the complete output the manifest recorded (``size`` bytes, ``frames`` frames), or
    ``None`` when it is. The size is compared first; the frame count is read only when it matches."""
    if not path.exists():
        return "missing"
    if (fmt == "png") != path.is_dir():
        return "not a " + ("folder" if fmt == "png" else "file")
    try:
        have_size = _size(path, fmt)
        if have_size != size:
            return f"{have_size} bytes, expected {size}"
        have_frames = _frames(path, fmt)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is not usable
        return f"unreadable ({type(exc).__name__}: {exc})"
    if have_frames != frames:
        return f"{have_frames} frames, expected {frames}"
    return None


def gif_frame_count(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return int(getattr(image, "n_frames", 1))


# -- MP4 ---------------------------------------------------------------------------------------------------
def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes that must exactly fill ``[start, end)``."""
    pos = start
    while pos < end:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            raise ValueError(f"truncated box header at byte {pos}")
        size, kind = struct.unpack(">I4s", header)
        head = 8
        if size == 1:
            large = f.read(8)
            if len(large) < 8:
                raise ValueError(f"truncated box header at byte {pos}")
            size, head = struct.unpack(">Q", large)[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise ValueError(f"box {kind.decode('latin-1')!r} at byte {pos} runs past the end (truncated file)")
        yield kind, pos + head, pos + size
        pos += size


def _child(f: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(f, start, end):
        if k == kind:
            return s, e
    return None


def mp4_frame_count(path: Path) -> int:
    """Samples of the first video track of an MP4 (its frames); ``ValueError`` if the file is truncated or
    has no video track."""
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        top = list(_boxes(f, 0, end))  # every top-level box must end inside the file
        moov = next(((s, e) for k, s, e in top if k == b"moov"), None)
        if moov is None:
            raise ValueError("no moov box (not a finished MP4)")
        for kind, s, e in _boxes(f, *moov):
            if kind != b"trak":
                continue
            mdia = _child(f, s, e, b"mdia")
            hdlr = mdia and _child(f, *mdia, b"hdlr")
            if not hdlr:
                continue
            f.seek(hdlr[0] + 8)  # version/flags, pre_defined
            if f.read(4) != b"vide":
                continue
            minf = _child(f, *mdia, b"minf")
            stbl = minf and _child(f, *minf, b"stbl")
            stsz = stbl and _child(f, *stbl, b"stsz")
            if not stsz:
                raise ValueError("video track without a sample table")
            f.seek(stsz[0] + 8)  # version/flags, sample_size
            data = f.read(4)
            if len(data) < 4:
                raise ValueError("truncated sample table")
            return int(struct.unpack(">I", data)[0])
    raise ValueError("no video track")
