"""Position tables, timestep embeddings, caption projection and the 2D patch embedding.

The sin-cos tables and the timestep projection reproduce the arithmetic of diffusers'
``get_1d_sincos_pos_embed_from_grid``, ``get_2d_sincos_pos_embed`` and ``Timesteps`` step by step (same
dtypes, same operation order), so the values are bit-identical to theirs on the same device. Parameter
names follow diffusers' ``TimestepEmbedding``, ``AdaLayerNormSingle``, ``PixArtAlphaTextProjection``
and ``PatchEmbed`` so their checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = [
    "AdaLNSingle",
    "CaptionProjection",
    "PatchEmbed2D",
    "TimestepEmbedder",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "timestep_sinusoids",
]

DeviceLike = Union[str, torch.device, None]


def _table_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the frequencies are computed in float64 as diffusers does.
    return torch.float32 if device.type == "mps" else torch.float64


def get_1d_sincos_pos_embed(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos table ``[M, embed_dim]`` for ``M`` (possibly fractional) positions: ``[sin(p w), cos(p w)]``
    with ``w_i = 1 / 10000^(i / (embed_dim / 2))``. Returned in float64 (float32 on MPS); callers cast."""
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos embedding dim must be even, got {embed_dim}")
    dtype = _table_dtype(positions.device)
    half = embed_dim // 2
    omega = torch.arange(half, device=positions.device, dtype=dtype) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).to(dtype) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def get_2d_sincos_pos_embed(
    embed_dim: int,
    grid_size: Union[int, Sequence[int]],
    base_size: float = 16,
    interpolation_scale: float = 1.0,
    device: DeviceLike = None,
) -> torch.Tensor:
    """2D sin-cos table ``[gh * gw, embed_dim]`` for a ``(gh, gw)`` patch grid, tokens in row-major order.

    Coordinates are ``arange(n) / (n / base_size) / interpolation_scale`` (so a grid of ``base_size``
    patches spans ``[0, base_size)`` whatever its resolution). The first half of the channels encodes the
    column (w) coordinate, the second half the row (h) coordinate, as in diffusers.
    """
    if isinstance(grid_size, int):
        gh, gw = grid_size, grid_size
    else:
        gh, gw = int(grid_size[0]), int(grid_size[1])
    if embed_dim % 2 != 0:
        raise ValueError(f"2D sin-cos embedding dim must be even, got {embed_dim}")
    coord_h = torch.arange(gh, device=device, dtype=torch.float32) / (gh / base_size) / interpolation_scale
    coord_w = torch.arange(gw, device=device, dtype=torch.float32) / (gw / base_size) / interpolation_scale
    cols = coord_w.reshape(1, gw).expand(gh, gw)  # token (i, j) -> column coordinate w_j
    rows = coord_h.reshape(gh, 1).expand(gh, gw)  # token (i, j) -> row coordinate h_i
    emb_w = get_1d_sincos_pos_embed(embed_dim // 2, cols.reshape(-1))
    emb_h = get_1d_sincos_pos_embed(embed_dim // 2, rows.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1)


def timestep_sinusoids(
    timesteps: torch.Tensor,
    num_channels: int = 256,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal projection ``[N, num_channels]`` (float32) of ``N`` timesteps (DDPM style).

    Frequencies ``exp(-ln(max_period) * i / (half - downscale_freq_shift))``; ``[cos, sin]`` when
    ``flip_sin_to_cos`` else ``[sin, cos]``; an odd channel count is zero-padded.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D [N], got shape {list(timesteps.shape)}")
    half = num_channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - downscale_freq_shift)
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if num_channels % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """MLP ``linear_1 -> SiLU -> linear_2`` on a timestep projection (diffusers ``TimestepEmbedding``)."""

    def __init__(self, in_channels: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embed_dim, bias=bias)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class _TimestepEmbedding(nn.Module):
    """Sinusoidal projection (256 channels, cos first, no shift) + :class:`TimestepEmbedder`.

    Exists to give the checkpoint path ``emb.timestep_embedder.*`` of diffusers' AdaLayerNormSingle.
    """

    def __init__(self, embed_dim: int, num_channels: int = 256) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.timestep_embedder = TimestepEmbedder(num_channels, embed_dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        proj = timestep_sinusoids(timestep, self.num_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.timestep_embedder(proj.to(dtype))


class AdaLNSingle(nn.Module):
    """adaLN-single (PixArt-alpha): one timestep embedding shared by every block.

    ``forward(t)`` returns ``(t_mod [N, 6 * C], embedded_t [N, C])``: ``t_mod = linear(SiLU(embedded_t))``
    holds the six shift/scale/gate vectors each block adds to its own ``scale_shift_table``; ``embedded_t``
    feeds the final layer's modulation.
    """

    def __init__(self, embed_dim: int, num_mod: int = 6) -> None:
        super().__init__()
        self.emb = _TimestepEmbedding(embed_dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embed_dim, num_mod * embed_dim, bias=True)

    def forward(
        self, timestep: torch.Tensor, hidden_dtype: Optional[torch.dtype] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = hidden_dtype if hidden_dtype is not None else self.linear.weight.dtype
        embedded = self.emb(timestep, dtype)
        return self.linear(self.silu(embedded)), embedded


class CaptionProjection(nn.Module):
    """Text-encoder features to model width: ``linear_1 -> GELU(tanh) -> linear_2``."""

    def __init__(self, in_features: int, hidden_size: int, out_features: Optional[int] = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size, bias=True)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(hidden_size, hidden_size if out_features is None else out_features, bias=True)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))


class PatchEmbed2D(nn.Module):
    """Non-overlapping 2D patches (``proj``: Conv2d with stride = patch) plus a 2D sin-cos table.

    The table of the training grid (``sample_size // patch_size`` square) is a non-persistent buffer;
    any other grid gets its own table computed on the fly with the same ``base_size`` and
    ``interpolation_scale`` (as diffusers' ``PatchEmbed`` does). Input ``[N, C, H, W]`` -> ``[N, H*W/p^2, D]``.
    """

    def __init__(
        self,
        sample_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        interpolation_scale: Optional[float] = None,
        base_size: Optional[float] = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid = sample_size // patch_size
        self.base_size = self.grid if base_size is None else base_size
        self.interpolation_scale = (
            max(sample_size // 64, 1) if interpolation_scale is None else interpolation_scale
        )
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.register_buffer("pos_embed", torch.empty(0), persistent=False)
        self.init_nonpersistent_buffers()

    def init_nonpersistent_buffers(self, device: DeviceLike = None) -> None:
        """(Re)compute the position table buffer, e.g. after building the module on the meta device."""
        if device is None:
            device = self.proj.weight.device
        device = torch.device(device)
        if device.type == "meta":
            self.pos_embed = torch.empty(1, self.grid * self.grid, self.embed_dim, device=device)
            return
        self.pos_embed = self.pos_table(self.grid, self.grid, device)

    def pos_table(self, grid_h: int, grid_w: int, device: DeviceLike = None) -> torch.Tensor:
        """The ``[1, grid_h * grid_w, D]`` float32 table of a ``(grid_h, grid_w)`` grid."""
        table = get_2d_sincos_pos_embed(
            self.embed_dim,
            (grid_h, grid_w),
            base_size=self.base_size,
            interpolation_scale=self.interpolation_scale,
            device=device,
        )
        return table.float().unsqueeze(0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        gh, gw = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        x = self.proj(latent).flatten(2).transpose(1, 2).contiguous()  # token-major memory, as blocks expect
        if gh == self.grid and gw == self.grid and self.pos_embed.device == x.device:
            table = self.pos_embed
        else:
            table = self.pos_table(gh, gw, x.device)
        return (x + table).to(x.dtype)
