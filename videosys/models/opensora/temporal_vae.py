"""The temporal stage of the Open-Sora v1.2 VAE (``VAE_Temporal_SD``), checkpoint-compatible.

It compresses the 4-channel latents of the 2D (SDXL) VAE by 4 along time with causal 3D convolutions:
every convolution sees only the current and earlier frames (zeros are padded at the front of the time
axis), so the latent of a frame never depends on later frames.  The module and parameter names follow
the official state dict (``encoder.block_res_blocks.1.0.conv1.conv.weight`` and so on), so the
``temporal_vae.*`` part of ``hpcai-tech/OpenSora-VAE-v1.2`` loads as is.

Shapes (defaults of ``VAE_Temporal_SD``)::

    encoder: 4 -> conv_in 128 -> [4 ResBlocks per level: 128, 256, 256, 512]
             time stride 2 after levels 1 and 2 (``conv_blocks.1``, ``conv_blocks.2``) -> 512 -> conv2 8
    decoder: 4 -> conv1 512 -> 4 ResBlocks 512 -> levels 3, 2, 1, 0 (512, 256, 256, 128) with a
             time depth-to-space x2 after levels 3 and 2 (``conv_blocks.2``: 512 -> 1024,
             ``conv_blocks.1``: 256 -> 512) -> GroupNorm, SiLU, conv_out 4
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CausalConv3d",
    "TemporalResBlock",
    "TemporalEncoder",
    "TemporalDecoder",
    "TemporalVAE",
    "LOGVAR_RANGE",
]

logger = logging.getLogger(__name__)

LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)
"""The posterior log-variance is clamped to this range before sampling (as in the reference)."""

Triple = tuple[int, int, int]


def _triple(value: Union[int, Sequence[int]]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    t, h, w = (int(v) for v in value)
    return (t, h, w)


class CausalConv3d(nn.Module):
    """A ``Conv3d`` that is causal in time.

    The input is zero-padded by ``dilation * (kt - 1) + 1 - time_stride`` frames at the *front* of the time
    axis and by ``k // 2`` on both sides of height and width; the convolution itself (``self.conv``, the
    name in the checkpoint) has no padding and a stride of ``(time_stride, 1, 1)``.  With stride 2 and
    kernel 3 an even number of frames is exactly halved.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        *,
        time_stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"CausalConv3d needs odd spatial kernel sizes, got {(kt, kh, kw)}")
        time_pad = dilation * (kt - 1) + (1 - time_stride)
        if time_pad < 0:
            raise ValueError(f"time stride {time_stride} is larger than the temporal receptive field {kt}")
        self.time_pad = time_pad
        # F.pad order: (w_left, w_right, h_top, h_bottom, t_front, t_back)
        self.padding: tuple[int, ...] = (kw // 2, kw // 2, kh // 2, kh // 2, time_pad, 0)
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            (kt, kh, kw),
            stride=(time_stride, 1, 1),
            dilation=(dilation, 1, 1),
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding)
        return self.conv(x)


class TemporalResBlock(nn.Module):
    """GroupNorm -> SiLU -> causal conv 3x3x3 -> GroupNorm -> SiLU -> causal conv 3x3x3, plus a residual
    (through a bias-free 1x1x1 causal conv ``conv3`` when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, bias=False)
        self.conv3: Optional[CausalConv3d] = (
            CausalConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.conv3 is None else self.conv3(x)
        x = self.conv1(F.silu(self.norm1(x)))
        x = self.conv2(F.silu(self.norm2(x)))
        return x + residual


def _res_stack(in_channels: int, out_channels: int, count: int, num_groups: int) -> nn.ModuleList:
    """``count`` ResBlocks, the first going ``in_channels -> out_channels``."""
    blocks = nn.ModuleList()
    for j in range(count):
        blocks.append(TemporalResBlock(in_channels if j == 0 else out_channels, out_channels, num_groups))
    return blocks


class TemporalEncoder(nn.Module):
    """Causal 3D encoder: ``[B, in_channels, T, H, W] -> [B, out_channels, T / 2**n_down, H, W]``."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 8,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError("temporal_downsample needs one entry per level but the last")
        self.temporal_downsample = tuple(bool(d) for d in temporal_downsample)
        self.conv_in = CausalConv3d(in_channels, filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        # One entry per level but the last; nn.Identity (no parameters) where time is not downsampled,
        # so that the indices of the strided convs match the checkpoint (conv_blocks.1, conv_blocks.2).
        self.conv_blocks = nn.ModuleList()
        prev = filters
        levels = len(channel_multipliers)
        for i, mult in enumerate(channel_multipliers):
            width = filters * int(mult)
            self.block_res_blocks.append(_res_stack(prev, width, num_res_blocks, num_groups))
            prev = width
            if i < levels - 1:
                if self.temporal_downsample[i]:
                    self.conv_blocks.append(CausalConv3d(prev, width, 3, time_stride=2))
                else:
                    self.conv_blocks.append(nn.Identity())
        self.res_blocks = _res_stack(prev, prev, num_res_blocks, num_groups)
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv2 = CausalConv3d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    """Causal 3D decoder: ``[B, in_channels, t, H, W] -> [B, out_channels, t * 2**n_down, H, W]``.

    Time is upsampled by a causal conv to ``2 * C`` channels followed by a depth-to-space along time:
    channel ``c * 2 + s`` of frame ``t`` becomes channel ``c`` of frame ``2 * t + s``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError("temporal_downsample needs one entry per level but the last")
        self.temporal_downsample = tuple(bool(d) for d in temporal_downsample)
        levels = len(channel_multipliers)
        prev = filters * int(channel_multipliers[-1])
        self.conv1 = CausalConv3d(in_channels, prev, 3, bias=True)
        self.res_blocks = _res_stack(prev, prev, num_res_blocks, num_groups)
        # Built from the deepest level up but indexed by level, as in the checkpoint:
        # block_res_blocks[i] belongs to level i; conv_blocks[i - 1] upsamples after level i.
        res_by_level: list[Optional[nn.ModuleList]] = [None] * levels
        conv_by_level: list[Optional[nn.Module]] = [None] * (levels - 1)
        for i in reversed(range(levels)):
            width = filters * int(channel_multipliers[i])
            res_by_level[i] = _res_stack(prev, width, num_res_blocks, num_groups)
            prev = width
            if i > 0:
                if self.temporal_downsample[i - 1]:
                    conv_by_level[i - 1] = CausalConv3d(prev, prev * 2, 3)
                else:
                    conv_by_level[i - 1] = nn.Identity()
        self.block_res_blocks = nn.ModuleList(res_by_level)
        self.conv_blocks = nn.ModuleList(conv_by_level)
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv_out = CausalConv3d(prev, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                if self.temporal_downsample[i - 1]:
                    b, c2, t, h, w = x.shape
                    # "B (C ts) T H W -> B C (T ts) H W" with ts = 2
                    x = x.reshape(b, c2 // 2, 2, t, h, w).transpose(2, 3).reshape(b, c2 // 2, t * 2, h, w)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """``VAE_Temporal_SD``: encoder + ``quant_conv`` and ``post_quant_conv`` + decoder.

    Clips whose length is not a multiple of :attr:`time_downsample_factor` are zero-padded at the front
    on encode; :meth:`decode` drops the same number of leading frames given the original length.
    """

    def __init__(
        self,
        in_out_channels: int = 4,
        latent_channels: int = 4,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.in_out_channels = in_out_channels
        self.latent_channels = latent_channels
        self.time_downsample_factor = 2 ** sum(bool(d) for d in temporal_downsample)
        common = dict(
            filters=filters,
            num_res_blocks=num_res_blocks,
            channel_multipliers=tuple(channel_multipliers),
            temporal_downsample=tuple(temporal_downsample),
            num_groups=num_groups,
        )
        self.encoder = TemporalEncoder(in_channels=in_out_channels, out_channels=2 * latent_channels, **common)
        self.quant_conv = CausalConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = CausalConv3d(latent_channels, latent_channels, 1)
        self.decoder = TemporalDecoder(in_channels=latent_channels, out_channels=in_out_channels, **common)

    def time_padding(self, num_frames: int) -> int:
        """Zero frames put in front of a clip of ``num_frames`` frames before encoding it."""
        factor = self.time_downsample_factor
        return (factor - num_frames % factor) % factor

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of one clip: ``ceil(num_frames / time_downsample_factor)``."""
        return (num_frames + self.time_padding(num_frames)) // self.time_downsample_factor

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)`` of ``x`` ``[B, C, T, H, W]``; logvar clamped to :data:`LOGVAR_RANGE`."""
        pad = self.time_padding(x.shape[2])
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        moments = self.quant_conv(self.encoder(x)).to(x.dtype)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self, x: torch.Tensor, *, sample_posterior: bool = True, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Latent of ``x`` ``[B, C, T, H, W]``: a posterior sample (``mean + std * noise``) or the mean.

        The noise is drawn in float32 on the generator's device (CPU without a generator) and then moved,
        so a seeded CPU generator gives the same latent on every device.
        """
        mean, logvar = self.encode_moments(x)
        if not sample_posterior:
            return mean
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        return mean + torch.exp(0.5 * logvar) * noise.to(device=mean.device, dtype=mean.dtype)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Frames ``[B, C, num_frames, H, W]`` of the clip of ``num_frames`` frames whose latent is ``z``."""
        expected = self.latent_frames(num_frames)
        if z.shape[2] != expected:
            raise ValueError(f"a clip of {num_frames} frames has {expected} latent frames, got {z.shape[2]}")
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.time_padding(num_frames) :]
