"""Reading videos back for comparison: .mp4 (and other ffmpeg containers), .gif, or a folder of PNG frames
(the format ``result.save(folder)`` writes). Every reader returns uint8 ``[T, H, W, 3]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FFMPEG_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
VIDEO_SUFFIXES = FFMPEG_SUFFIXES + (".gif",)
FRAME_SUFFIXES = (".png",)


def is_frame_folder(path: Path) -> bool:
    """A folder that holds PNG frames directly (one video), as opposed to a folder of videos."""
    return path.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES and p.is_file() for p in path.iterdir())


def is_video_path(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES) or is_frame_folder(path)


def _rgb(image) -> np.ndarray:  # PIL image -> uint8 [H, W, 3]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _read_frames_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"video: {str(folder)!r} holds no PNG frames")
    frames = []
    for f in files:
        with Image.open(f) as im:
            frames.append(_rgb(im))
    return _stack(frames, folder)


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [_rgb(frame) for frame in ImageSequence.Iterator(im)]
    return _stack(frames, path)


def _read_ffmpeg(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401 - the decoder behind imageio's FFMPEG plugin
    except ImportError:
        raise ValueError(f"video: reading {path.suffix} needs imageio-ffmpeg (pip install imageio-ffmpeg)") from None
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        frames = [np.asarray(frame, dtype=np.uint8)[..., :3] for frame in reader]
    finally:
        reader.close()
    return _stack(frames, path)


def _stack(frames: list[np.ndarray], where: Path) -> np.ndarray:
    if not frames:
        raise ValueError(f"video: {str(where)!r} has no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"video: {str(where)!r} has frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


def read_video(path: str | Path) -> np.ndarray:
    """The frames of a video file or PNG-frame folder as uint8 ``[T, H, W, 3]``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video: {str(path)!r} does not exist")
    if path.is_dir():
        return _read_frames_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _read_gif(path)
    if suffix in FFMPEG_SUFFIXES:
        return _read_ffmpeg(path)
    raise ValueError(f"video: {str(path)!r}: suffix {suffix or '(none)'!r} not allowed "
                     f"(allowed: {', '.join(VIDEO_SUFFIXES)}, or a folder of PNG frames)")
