"""Building blocks of the Open-Sora-Plan v1.1 CausalVAE (see :mod:`videosys.models.opensora_plan.causal_vae`).

Every module keeps the attribute names of the official state dict (``conv``, ``norm1``, ``nin_shortcut``,
``mix_factor`` ...), so that the checkpoint loads without renaming. Tensors are laid out
``[B, C, T, H, W]`` throughout; the "2D" blocks run every frame on its own.

Causality: a :class:`CausalConv3d` pads the front of the time axis with copies of the *first frame* (not
zeros), so that output frame ``t`` reads only input frames ``<= t`` and a single frame is processed like
an image. The time-downsampling block pads the same way; the time-upsampling block keeps the first frame
and interpolates the others. The GroupNorms of the 3D blocks, however, take their statistics over all the
frames they are given (as in the reference), which couples every frame with every other one.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import scaled_dot_product

__all__ = [
    "NORM_EPS",
    "MIX_FACTOR_INIT",
    "CausalConv3d",
    "FrameConv2d",
    "ResnetBlock2D",
    "ResnetBlock3D",
    "FrameAttention",
    "SpatialDownsample",
    "TimeDownsampleRes2x",
    "SpatialUpsample2x",
    "TimeUpsampleRes2x",
    "group_norm",
    "pad_first_frame",
]

NORM_EPS = 1e-6
"""GroupNorm epsilon of every norm in the reference."""

MIX_FACTOR_INIT = 2.0
"""Initial ``mix_factor`` of the time resampling blocks (the trained value comes from the checkpoint)."""


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """The reference's ``Normalize``: affine GroupNorm with eps 1e-6 (32 groups in the released model)."""
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups")
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=True)


def pad_first_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``x`` ``[B, C, T, H, W]`` with ``frames`` copies of its first frame put in front of the time axis."""
    if frames <= 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, frames, -1, -1), x], dim=2)


def _frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B * T, C, H, W]`` (batch-major)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _images_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`_frames_to_images`."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class CausalConv3d(nn.Module):
    """A ``Conv3d`` that is causal in time (state-dict name of the convolution: ``conv``).

    The time axis is front-padded with ``kt - 1`` copies of the first frame; height and width are
    zero-padded by ``spatial_padding`` on both sides (by the convolution itself). Stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple[int, int, int]],
        *,
        spatial_padding: int = 0,
    ) -> None:
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), padding=(0, spatial_padding, spatial_padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_first_frame(x, self.time_pad))


class FrameConv2d(nn.Conv2d):
    """A ``Conv2d`` applied to every frame of a ``[B, C, T, H, W]`` video (state-dict names ``weight``/``bias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _images_to_frames(super().forward(_frames_to_images(x)), x.shape[0])


class ResnetBlock2D(nn.Module):
    """Per-frame ResNet block: GN -> SiLU -> conv 3x3 -> GN -> SiLU -> conv 3x3, plus the input (through a
    1x1 ``nin_shortcut`` when the width changes). Norm statistics are per frame."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _images_to_frames(self._images(_frames_to_images(x)), x.shape[0])


class ResnetBlock3D(nn.Module):
    """ResNet block with causal 3x3x3 convolutions; the GroupNorms span all frames (reference behaviour)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, spatial_padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, spatial_padding=1)
        self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class FrameAttention(nn.Module):
    """The reference's ``AttnBlock3DFix``: single-head self-attention over the ``H * W`` positions of each
    frame (width ``C``, scale ``C ** -0.5``), with 1x1x1 q/k/v/out projections and a residual. The norm
    before it spans all frames."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x)

        def tokens(z: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B * T, 1, H * W, C]
            return z.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)

        out = scaled_dot_product(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class SpatialDownsample(nn.Module):
    """The reference's 2D ``Downsample``: per frame, zero-pad one row/column at the bottom/right, then a
    3x3 convolution with stride 2 (``H -> H // 2``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = F.pad(_frames_to_images(x), (0, 1, 0, 1))
        return _images_to_frames(self.conv(images), x.shape[0])


class TimeDownsampleRes2x(nn.Module):
    """Causal 2x time downsampling, ``T -> (T - 1) // 2 + 1``.

    Two first-frame copies are put in front of the time axis; then
    ``sigmoid(mix_factor) * avgpool + (1 - sigmoid(mix_factor)) * conv``, both with a time window of 3 and
    time stride 2 (the conv is a plain ``Conv3d`` 3x3x3, zero-padded by 1 in height and width). Output
    frame ``j`` reads input frames ``2j - 2 .. 2j`` (frame 0 only the first frame).
    """

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(channels, channels, kernel, stride=(2, 1, 1), padding=(0, kernel // 2, kernel // 2))
        self.mix_factor = nn.Parameter(torch.full((1,), MIX_FACTOR_INIT))

    def _time_average(self, x: torch.Tensor) -> torch.Tensor:
        """``avg_pool3d`` with window ``(kernel, 1, 1)`` and stride ``(2, 1, 1)``, written out: the window is
        summed in float32 and divided by its length, then cast back (the pooling kernels' arithmetic; CPU
        has no half/bfloat16 ``avg_pool3d``)."""
        n = (x.shape[2] - self.kernel) // 2 + 1
        total = x[:, :, 0 : 2 * n - 1 : 2].float()
        for k in range(1, self.kernel):
            total = total + x[:, :, k : k + 2 * n - 1 : 2].float()
        return (total / self.kernel).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x = pad_first_frame(x, self.kernel - 1)
        return alpha * self._time_average(x) + (1 - alpha) * self.conv(x)


class SpatialUpsample2x(nn.Module):
    """Nearest 2x upsampling of height and width, then a causal ``1x3x3`` convolution (``conv.conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (1, 3, 3), spatial_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


class TimeUpsampleRes2x(nn.Module):
    """Causal 2x time upsampling, ``T -> 1 + 2 (T - 1)``.

    The first frame is kept as is; frames ``1..T-1`` are linearly interpolated to twice as many
    (``F.interpolate`` trilinear, scale ``(2, 1, 1)``, half-pixel centres, as the reference). The result
    ``y`` is mixed with a causal 3x3x3 conv of itself: ``sigmoid(m) * y + (1 - sigmoid(m)) * conv(y)``.
    A single frame passes through the mix only. The interpolation looks one frame ahead: output frame
    ``2k`` (k >= 1) reads input frames ``k`` and ``k + 1``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, spatial_padding=1)
        self.mix_factor = nn.Parameter(torch.full((1,), MIX_FACTOR_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2.0, 1.0, 1.0), mode="trilinear")
            x = torch.cat([x[:, :, :1], rest], dim=2)
        return alpha * x + (1 - alpha) * self.conv(x)
