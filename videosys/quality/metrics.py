"""PSNR and SSIM of two videos (uint8 ``[T, H, W, 3]``), implemented with torch.

- **PSNR** of a video: ``10 log10(255^2 / MSE)`` with the MSE pooled over all frames, pixels and channels;
  ``inf`` for identical videos.
- **SSIM** of a video: the mean over frames of the frame SSIM; the frame SSIM is the mean SSIM map of each RGB
  channel (no conversion to luminance), averaged over the three channels. The map is Wang et al.'s
  (IEEE TIP 2004): an 11 x 11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
  ``L = 255``, evaluated only where the window fits inside the frame ("valid", as the reference MATLAB
  ``ssim_index``), in float64. Frames must be at least 11 x 11 pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DATA_RANGE = 255.0
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are uint8 ``[T, H, W, 3]`` videos of the same length and size."""
    for video, name in zip((a, b), names):
        if not isinstance(video, np.ndarray) or video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            got = f"{video.dtype} {list(video.shape)}" if isinstance(video, np.ndarray) else type(video).__name__
            raise ValueError(f"compare: {name} must be uint8 [T, H, W, 3] frames, got {got}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"compare: frame counts differ: {names[0]} has {a.shape[0]} frames, {names[1]} has {b.shape[0]}")
    if a.shape[1:3] != b.shape[1:3]:
        raise ValueError(f"compare: frame sizes differ: {names[0]} is {a.shape[2]}x{a.shape[1]}, "
                         f"{names[1]} is {b.shape[2]}x{b.shape[1]} (width x height)")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over the whole video (pooled MSE); ``inf`` when the videos are identical."""
    check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian of the SSIM window (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of ``[N, 1, H, W]``."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim_frames(a: np.ndarray, b: np.ndarray, chunk: int = 8) -> list[float]:
    """SSIM of every frame pair (per-channel maps averaged over channels and positions)."""
    check_pair(a, b)
    t, h, w, _ = a.shape
    if h < WINDOW or w < WINDOW:
        raise ValueError(f"compare: frames are {w}x{h}; SSIM needs at least {WINDOW}x{WINDOW} pixels")
    g = gaussian_window()
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    out: list[float] = []
    for s in range(0, t, chunk):
        # [frames, H, W, 3] -> [frames * 3, 1, H, W]
        x = torch.from_numpy(np.ascontiguousarray(a[s:s + chunk])).to(torch.float64).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
        y = torch.from_numpy(np.ascontiguousarray(b[s:s + chunk])).to(torch.float64).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
        mu_x, mu_y = _filter(x, g), _filter(y, g)
        sxx = _filter(x * x, g) - mu_x * mu_x
        syy = _filter(y * y, g) - mu_y * mu_y
        sxy = _filter(x * y, g) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
        den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
        per_channel = (num / den).mean(dim=(1, 2, 3)).view(-1, 3)
        out.extend(per_channel.mean(dim=1).tolist())
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of a video: the mean of its frame SSIMs (1.0 for identical videos)."""
    frames = ssim_frames(a, b)
    return float(sum(frames) / len(frames))
