"""Writing videos: .mp4 (imageio-ffmpeg, H.264), .gif, or a folder of PNG frames, chosen by the path.

Files are written under a temporary name in the same folder and renamed when complete, so an interrupted
write never leaves a file that looks finished.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".gif")


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames


def save_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write ``frames`` (uint8, T x H x W x 3) to ``path``; a path with no suffix (or ending in a separator)
    is a folder that receives ``frame_0000.png`` ... Returns the path written."""
    frames = _check_frames(frames)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output: suffix {suffix!r} not allowed (allowed: .mp4, .gif, or a folder for PNG frames)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not suffix:
        return _save_png_folder(frames, path)
    # A hidden sibling created by the writer itself, so the file gets the usual permissions (umask).
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{suffix}")
    try:
        if suffix == ".mp4":
            _write_mp4(frames, tmp, fps)
        else:
            _write_gif(frames, tmp, fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class VideoWriteError(OSError):
    """A video could not be written (a missing encoder, a full disk...); the message says which and why."""


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401 - the encoder behind imageio's FFMPEG plugin
    except ImportError:
        raise VideoWriteError(
            "output: writing .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or write .gif or a PNG folder"
        ) from None

    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sides
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    writer = imageio.get_writer(
        str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8, macro_block_size=1,
        pixelformat="yuv420p", output_params=["-movflags", "+faststart"],
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: Path, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0
    )


def _save_png_folder(frames: np.ndarray, folder: Path) -> Path:
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.mkdir()
    try:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i:04d}.png")
        if folder.exists():
            foreign = [p.name for p in folder.iterdir() if not (p.name.startswith("frame_") and p.suffix == ".png")]
            if foreign or not folder.is_dir():
                raise ValueError(f"output: {str(folder)!r} exists and is not a folder of frames; choose another path")
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
