"""The CausalVAE of Open-Sora-Plan v1.1.0 (``LanguageBind/Open-Sora-Plan-v1.1.0``, subfolder ``vae``),
checkpoint-compatible.

Checkpoint folder (the official layout, a diffusers ``ModelMixin`` folder)::

    config.json                           (1.6 kB; see below)
    diffusion_pytorch_model.safetensors   (1.07 GB; fp32)

The hub's ``vae/`` holds exactly these two files (no ``.bin``); :meth:`CausalVAE.from_pretrained` also
takes ``diffusion_pytorch_model.bin`` (``torch.load(weights_only=True)``), fp16 variants and sharded
indexes through :mod:`videosys.models.weights`.

The model has 246,859,499 parameters (987.4 MB in fp32), less than the 1.07 GB file: the file very likely
also holds the training loss's tensors (``loss.*``: LPIPS, discriminator, logvar), as diffusers saves
every submodule -- the v1.0.0 VAE file (987 MB) is exactly its 229.2M model parameters plus LPIPS and a
2D PatchGAN discriminator. ``loss.*`` keys are therefore dropped on load (logged); every other key and
shape is checked strictly. (Inferred from file sizes; the file itself was not inspected.)

``config.json`` fields of the released VAE (as printed in Open-Sora-Plan's
``docs/Train_And_Eval_CausalVideoVAE.md``, "the v1.1.0 version model configuration file"; 1,602 bytes
as JSON with indent 2, the hub lists 1.6 kB)::

    _class_name "CausalVAEModel", _diffusers_version "0.27.2", _name_or_path,
    hidden_size 128, hidden_size_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 4, embed_dim 4,
    double_z true, in_channels 3, out_channels 3, attn_resolutions [], dropout 0.0, resolution 256,
    q_conv "CausalConv3d",
    encoder_conv_in "Conv2d", encoder_conv_out "CausalConv3d", encoder_attention "AttnBlock3DFix",
    encoder_mid_resnet "ResnetBlock3D",
    encoder_resnet_blocks [ResnetBlock2D, ResnetBlock2D, ResnetBlock3D, ResnetBlock3D],
    encoder_spatial_downsample [Downsample, Downsample, Downsample, ""],
    encoder_temporal_downsample ["", TimeDownsampleRes2x, TimeDownsampleRes2x, ""],
    decoder_conv_in "CausalConv3d", decoder_conv_out "CausalConv3d", decoder_attention "AttnBlock3DFix",
    decoder_mid_resnet "ResnetBlock3D", decoder_resnet_blocks [ResnetBlock3D] * 4,
    decoder_spatial_upsample ["", SpatialUpsample2x, SpatialUpsample2x, SpatialUpsample2x],
    decoder_temporal_upsample ["", "", TimeUpsampleRes2x, TimeUpsampleRes2x],
    lr, loss_type (LPIPSWithDiscriminator3D), loss_params   (training only; ignored)

There is no ``scaling_factor``: the official wrapper multiplies latents by 0.18215 on encode and divides
by it on decode (hard-coded), so :attr:`CausalVAE.scaling_factor` is 0.18215 unless a config says
otherwise. :meth:`CausalVAE.encode` and :meth:`CausalVAE.decode` work on *unscaled* latents; the
pipeline applies the factor.

Extensions read from ``config.json`` (absent from the official file, so the defaults apply):
``scaling_factor`` (0.18215), ``norm_num_groups`` (32, as hard-coded in the reference; tiny test models
need fewer), and the tiling knobs under the reference's attribute names: ``tile_latent_min_size`` (64),
``tile_latent_min_size_t`` (8), ``tile_sample_min_size`` (512), ``tile_sample_min_size_t`` (29),
``tile_overlap_factor`` (0.25) -- the values the official Open-Sora-Plan v1.1 sampling script and
VideoSys set when tiling is on (the model class's own defaults, 256 / 65, are never used there).

Architecture (released config; ``C`` = 128)::

    encoder: conv_in (per-frame Conv2d 3->C)
      down.0: 2 x ResnetBlock2D C;             downsample (per-frame conv, stride 2)
      down.1: 2 x ResnetBlock2D C->2C;         downsample; time_downsample (TimeDownsampleRes2x)
      down.2: 2 x ResnetBlock3D 2C->4C;        downsample; time_downsample
      down.3: 2 x ResnetBlock3D 4C
      mid: block_1 (ResnetBlock3D), attn_1 (per-frame attention), block_2; norm_out, SiLU,
      conv_out (causal 3x3x3, 4C -> 2 z)
    quant_conv (causal 1x1x1, 2z -> 2 embed): mean | logvar
    post_quant_conv (1x1x1, embed -> z)
    decoder: conv_in (causal 3x3x3, z -> 4C); mid as above
      up.3: 3 x ResnetBlock3D 4C;        upsample (nearest x2 + conv 1x3x3); time_upsample
      up.2: 3 x ResnetBlock3D 4C;        upsample; time_upsample
      up.1: 3 x ResnetBlock3D 4C->2C;    upsample
      up.0: 3 x ResnetBlock3D 2C->C
      norm_out, SiLU, conv_out (causal 3x3x3, C -> 3)

Frames: each time-downsampling maps ``T -> (T - 1) / 2 + 1`` and each time-upsampling
``T -> 1 + 2 (T - 1)``, so a video of ``1 + 4k`` frames has ``1 + k`` latent frames (65 -> 17, 221 -> 56)
and decodes back to ``1 + 4k``. Other frame counts are rejected by :meth:`CausalVAE.encode` (the
reference would silently produce a latent that does not decode to the input length). Height and width
become ``H // 8`` and ``W // 8``.

Causality: all time convolutions are causal (first-frame replicate padding), so through the
convolutions latent frame 0 sees only video frame 0 and latent frame ``j`` only frames ``<= 4j``; decoded
frame 0 sees only latent frame 0. *But* the GroupNorms of the 3D blocks, the mid attention block and
``norm_out`` take statistics over all frames, as in the reference, so in the full model every output
depends (weakly) on every input frame. The time upsampling also interpolates one frame ahead.

Tiled decode (the default, as the official pipeline; :meth:`CausalVAE.decode`): when the latent has more
than ``tile_latent_min_size_t`` frames or is larger than ``tile_latent_min_size`` in height or width, it
is decoded in time chunks of ``tile_latent_min_size_t`` latent frames that overlap by one (chunk starts
``0, 7, 14, ...``; a chunk other than the first drops its first decoded frame, which duplicates the
previous chunk's last latent frame; no blending in time), and every chunk in spatial tiles of
``tile_latent_min_size`` latent pixels started every ``int(64 * 0.75) = 48`` latent pixels; neighbouring
tiles are blended linearly over ``int(512 * 0.25) = 128`` output pixels (the upper/left tile's weight
falls from 1 to ``1/128``), above first, then left, each tile being blended with its *already blended*
neighbours, and each tile keeps its first 384 rows and columns. Tile placement follows the reference
exactly, including its extra narrow tiles (a 64-latent side gets tiles at 0 and 48). The decoded output
is written into one preallocated tensor and only the edge strips of the previous tiles are kept, so
memory is bounded by one tile's activations plus the output, whatever the video length. Measured on an
H100 (fp16, random weights): 56 latent frames -> 221 x 512 x 512 in 9.8 s with a peak of 19.0 GiB above
the weights (one 8 x 64 x 64 tile alone: 18.6 GiB); the untiled decode of 17 latent frames needs 41 GiB.

Tiled and untiled decodes are *not* equal: each chunk/tile is decoded on its own, so GroupNorm statistics,
zero padding at tile borders and the causal context at chunk starts all differ. :meth:`CausalVAE.encode`
is untiled unless ``tiled=True`` (then the reference's ``tiled_encode``: time chunks of 29 frames
overlapping by one, spatial tiles of 512 pixels, blending over 16 latent pixels).

Not supported: ``attn_resolutions`` other than ``[]``, and block types other than the ones of the
released config (a clear ``ValueError`` names the field). The ``loss.*`` keys a training checkpoint may
carry (LPIPS / discriminator) are dropped on load.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union, overload

import torch
import torch.nn.functional as F
from torch import nn

from ...parallel.decode import decode_split
from ...parallel.state import ParallelState
from ..config_values import is_int, is_number
from ..weights import load_pretrained
from .causal_vae_blocks import (
    CausalConv3d,
    FrameAttention,
    FrameConv2d,
    ResnetBlock2D,
    ResnetBlock3D,
    SpatialDownsample,
    SpatialUpsample2x,
    TimeDownsampleRes2x,
    TimeUpsampleRes2x,
    group_norm,
)

__all__ = [
    "CLASS_NAME",
    "DEFAULT_SCALING_FACTOR",
    "LOGVAR_RANGE",
    "WEIGHTS_NAME",
    "CausalVAE",
    "CausalVAEConfig",
    "CausalVAEDecoder",
    "CausalVAEEncoder",
    "DecodeTile",
    "time_chunks",
]

logger = logging.getLogger(__name__)

CLASS_NAME = "CausalVAEModel"
"""``_class_name`` of the official ``config.json``."""

WEIGHTS_NAME = "diffusion_pytorch_model"
"""Stem of the official weights file (``diffusion_pytorch_model.safetensors``)."""

DEFAULT_SCALING_FACTOR = 0.18215
"""Latent scale of the official wrapper (``encode: z * 0.18215``, ``decode: z / 0.18215``)."""

LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)
"""The posterior log-variance is clamped to this range before sampling (as in the reference)."""

# Block types of the released config; the only ones implemented.
RESNET_2D = "ResnetBlock2D"
RESNET_3D = "ResnetBlock3D"
SPATIAL_DOWN = "Downsample"
TIME_DOWN = "TimeDownsampleRes2x"
SPATIAL_UP = "SpatialUpsample2x"
TIME_UP = "TimeUpsampleRes2x"

#: diffusers bookkeeping keys of config.json; ignored.
_BOOKKEEPING_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"})
#: training-only fields of the official config; accepted without effect.
_TRAINING_KEYS = frozenset({"lr", "loss_type", "loss_params", "dropout"})

PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device, None]


# -- config -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalVAEConfig:
    """Fields of the official ``config.json``; the defaults are the released v1.1.0 VAE's values.

    ``lr``, ``loss_type``, ``loss_params`` and ``dropout`` only matter for training and are kept for
    round-tripping. ``resolution`` only decides where ``attn_resolutions`` would put attention blocks
    (none: the list must be empty). The last six fields are extensions (module docstring).
    """

    hidden_size: int = 128
    hidden_size_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    in_channels: int = 3
    out_channels: int = 3
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    resolution: int = 256
    q_conv: str = "CausalConv3d"
    encoder_conv_in: str = "Conv2d"
    encoder_conv_out: str = "CausalConv3d"
    encoder_attention: str = "AttnBlock3DFix"
    encoder_mid_resnet: str = RESNET_3D
    encoder_resnet_blocks: tuple[str, ...] = (RESNET_2D, RESNET_2D, RESNET_3D, RESNET_3D)
    encoder_spatial_downsample: tuple[str, ...] = (SPATIAL_DOWN, SPATIAL_DOWN, SPATIAL_DOWN, "")
    encoder_temporal_downsample: tuple[str, ...] = ("", TIME_DOWN, TIME_DOWN, "")
    decoder_conv_in: str = "CausalConv3d"
    decoder_conv_out: str = "CausalConv3d"
    decoder_attention: str = "AttnBlock3DFix"
    decoder_mid_resnet: str = RESNET_3D
    decoder_resnet_blocks: tuple[str, ...] = (RESNET_3D, RESNET_3D, RESNET_3D, RESNET_3D)
    decoder_spatial_upsample: tuple[str, ...] = ("", SPATIAL_UP, SPATIAL_UP, SPATIAL_UP)
    decoder_temporal_upsample: tuple[str, ...] = ("", "", TIME_UP, TIME_UP)
    lr: float = 1e-5
    loss_type: str = "opensora.models.ae.videobase.losses.LPIPSWithDiscriminator3D"
    loss_params: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)  # training only
    # -- extensions (not in the official file) --
    scaling_factor: float = DEFAULT_SCALING_FACTOR
    norm_num_groups: int = 32
    tile_latent_min_size: int = 64
    tile_latent_min_size_t: int = 8
    tile_sample_min_size: int = 512
    tile_sample_min_size_t: int = 29
    tile_overlap_factor: float = 0.25

    _LIST_FIELDS: ClassVar[tuple[str, ...]] = (
        "hidden_size_mult",
        "attn_resolutions",
        "encoder_resnet_blocks",
        "encoder_spatial_downsample",
        "encoder_temporal_downsample",
        "decoder_resnet_blocks",
        "decoder_spatial_upsample",
        "decoder_temporal_upsample",
    )

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so that the config stays hashable.
        for name in self._LIST_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"CausalVAE config {field}: {getattr(self, field)!r} not allowed (allowed: {allowed})")

        for field in ("hidden_size", "num_res_blocks", "z_channels", "embed_dim", "in_channels", "out_channels"):
            v = getattr(self, field)
            if not is_int(v) or v < 1:
                raise bad(field, "a positive integer")
        mult = self.hidden_size_mult
        if not isinstance(mult, tuple) or not mult or not all(is_int(m) and m >= 1 for m in mult):
            raise bad("hidden_size_mult", "a non-empty list of positive integers")
        if self.double_z is not True:
            raise bad("double_z", "true (the posterior needs mean and log-variance)")
        if self.attn_resolutions != ():
            raise bad("attn_resolutions", "[] (attention inside the levels is not implemented)")
        fixed = {
            "q_conv": "CausalConv3d",
            "encoder_conv_in": "Conv2d",
            "encoder_conv_out": "CausalConv3d",
            "encoder_attention": "AttnBlock3DFix",
            "encoder_mid_resnet": RESNET_3D,
            "decoder_conv_in": "CausalConv3d",
            "decoder_conv_out": "CausalConv3d",
            "decoder_attention": "AttnBlock3DFix",
            "decoder_mid_resnet": RESNET_3D,
        }
        for field, allowed in fixed.items():
            if getattr(self, field) != allowed:
                raise bad(field, repr(allowed))
        levels = len(mult)
        per_level = {
            "encoder_resnet_blocks": (RESNET_2D, RESNET_3D),
            "encoder_spatial_downsample": ("", SPATIAL_DOWN),
            "encoder_temporal_downsample": ("", TIME_DOWN),
            "decoder_resnet_blocks": (RESNET_2D, RESNET_3D),
            "decoder_spatial_upsample": ("", SPATIAL_UP),
            "decoder_temporal_upsample": ("", TIME_UP),
        }
        for field, choices in per_level.items():
            value = getattr(self, field)
            if not isinstance(value, tuple) or len(value) != levels or any(v not in choices for v in value):
                allowed = " / ".join(repr(c) for c in choices)
                raise bad(field, f"{levels} entries (one per hidden_size_mult level), each {allowed}")
        if self.encoder_spatial_downsample[-1] or self.encoder_temporal_downsample[-1]:
            # The reference's encoder feeds the last level's block output to the mid block, skipping
            # any resampling of that level; refuse rather than diverge.
            raise ValueError("CausalVAE config: the last encoder level must not downsample (the reference skips it)")
        down_s = sum(bool(v) for v in self.encoder_spatial_downsample)
        down_t = sum(bool(v) for v in self.encoder_temporal_downsample)
        if sum(bool(v) for v in self.decoder_spatial_upsample) != down_s:
            raise bad("decoder_spatial_upsample", f"as many upsamplings as encoder_spatial_downsample ({down_s})")
        if sum(bool(v) for v in self.decoder_temporal_upsample) != down_t:
            raise bad("decoder_temporal_upsample", f"as many upsamplings as encoder_temporal_downsample ({down_t})")
        if not is_number(self.scaling_factor) or self.scaling_factor <= 0:
            raise bad("scaling_factor", "a positive number")
        groups = self.norm_num_groups
        if not is_int(groups) or groups < 1:
            raise bad("norm_num_groups", "a positive integer")
        for width in {self.hidden_size * m for m in mult}:
            if width % groups:
                raise bad("norm_num_groups", f"a divisor of every block width (here {width})")
        for field in (
            "tile_latent_min_size",
            "tile_latent_min_size_t",
            "tile_sample_min_size",
            "tile_sample_min_size_t",
        ):
            v = getattr(self, field)
            if not is_int(v) or v < 2:
                raise bad(field, "an integer >= 2")
        f = self.tile_overlap_factor
        if not is_number(f) or not 0 <= f < 1:
            raise bad("tile_overlap_factor", "a number in [0, 1)")

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def spatial_downsample(self) -> int:
        return 2 ** sum(bool(v) for v in self.encoder_spatial_downsample)

    @property
    def temporal_downsample(self) -> int:
        return 2 ** sum(bool(v) for v in self.encoder_temporal_downsample)

    # -- JSON -----------------------------------------------------------------------------------------------
    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> CausalVAEConfig:
        """Build from an official ``config.json`` dict (plus the extensions).

        diffusers bookkeeping keys are dropped and unknown keys ignored (debug log); a ``_class_name``
        other than ``"CausalVAEModel"`` is a ``ValueError``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"CausalVAE config: expected a mapping, got {type(data).__name__}")
        class_name = data.get("_class_name", CLASS_NAME)
        if class_name != CLASS_NAME:
            raise ValueError(f"CausalVAE config _class_name: {class_name!r} not allowed (allowed: {CLASS_NAME!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names and k not in _BOOKKEEPING_KEYS)
        if unknown:
            logger.debug("CausalVAE config: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json_dict(self) -> dict[str, Any]:
        """All fields as JSON values (tuples as lists), without bookkeeping keys."""
        out = dataclasses.asdict(self)
        for name in self._LIST_FIELDS:
            out[name] = list(out[name])
        if out["loss_params"] is not None:
            out["loss_params"] = dict(out["loss_params"])
        return out


# -- encoder / decoder ------------------------------------------------------------------------------------


def _resnet(kind: str, in_channels: int, out_channels: int, groups: int) -> nn.Module:
    cls = ResnetBlock2D if kind == RESNET_2D else ResnetBlock3D
    return cls(in_channels, out_channels, groups)


class _Mid(nn.Module):
    """``mid.block_1``, ``mid.attn_1``, ``mid.block_2``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, groups)
        self.attn_1 = FrameAttention(channels, groups)
        self.block_2 = ResnetBlock3D(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), then optionally a spatial and a time resampling
    (``downsample`` / ``time_downsample`` in the encoder, ``upsample`` / ``time_upsample`` in the decoder)."""

    def __init__(self, blocks: nn.ModuleList, spatial: nn.Module | None, temporal: nn.Module | None, up: bool):
        super().__init__()
        self.block = blocks
        self._spatial_name = "upsample" if up else "downsample"
        self._temporal_name = "time_upsample" if up else "time_downsample"
        if spatial is not None:
            self.add_module(self._spatial_name, spatial)
        if temporal is not None:
            self.add_module(self._temporal_name, temporal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        for name in (self._spatial_name, self._temporal_name):
            module = self._modules.get(name)
            if module is not None:
                x = module(x)
        return x


class CausalVAEEncoder(nn.Module):
    """``[B, in_channels, T, H, W] -> [B, 2 z_channels, (T - 1) / 4 + 1, H / 8, W / 8]`` (released config)."""

    def __init__(self, config: CausalVAEConfig) -> None:
        super().__init__()
        c = config
        groups = c.norm_num_groups
        self.conv_in = FrameConv2d(c.in_channels, c.hidden_size, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = c.hidden_size
        for i, mult in enumerate(c.hidden_size_mult):
            block_out = c.hidden_size * mult
            blocks = nn.ModuleList()
            for j in range(c.num_res_blocks):
                blocks.append(_resnet(c.encoder_resnet_blocks[i], block_in if j == 0 else block_out, block_out, groups))
            block_in = block_out
            spatial = SpatialDownsample(block_in) if c.encoder_spatial_downsample[i] else None
            temporal = TimeDownsampleRes2x(block_in) if c.encoder_temporal_downsample[i] else None
            self.down.append(_Level(blocks, spatial, temporal, up=False))
        self.mid = _Mid(block_in, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = CausalConv3d(block_in, 2 * c.z_channels, 3, spatial_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class CausalVAEDecoder(nn.Module):
    """``[B, z_channels, t, h, w] -> [B, out_channels, 1 + 4 (t - 1), 8 h, 8 w]`` (released config).

    ``up`` is indexed by level (``up.3`` runs first), as in the checkpoint.
    """

    def __init__(self, config: CausalVAEConfig) -> None:
        super().__init__()
        c = config
        groups = c.norm_num_groups
        levels = len(c.hidden_size_mult)
        block_in = c.hidden_size * c.hidden_size_mult[-1]
        self.conv_in = CausalConv3d(c.z_channels, block_in, 3, spatial_padding=1)
        self.mid = _Mid(block_in, groups)
        by_level: list[_Level | None] = [None] * levels
        for i in reversed(range(levels)):
            block_out = c.hidden_size * c.hidden_size_mult[i]
            blocks = nn.ModuleList()
            for j in range(c.num_res_blocks + 1):
                blocks.append(_resnet(c.decoder_resnet_blocks[i], block_in if j == 0 else block_out, block_out, groups))
            block_in = block_out
            spatial = SpatialUpsample2x(block_in) if c.decoder_spatial_upsample[i] else None
            temporal = TimeUpsampleRes2x(block_in) if c.decoder_temporal_upsample[i] else None
            by_level[i] = _Level(blocks, spatial, temporal, up=True)
        self.up = nn.ModuleList(by_level)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = CausalConv3d(block_in, c.out_channels, 3, spatial_padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


# -- tiling -----------------------------------------------------------------------------------------------


def time_chunks(length: int, tile: int) -> list[tuple[int, int]]:
    """The reference's time chunks ``[(start, end), ...]`` of ``length`` frames for tiles of ``tile``.

    Chunks start every ``tile - 1`` frames and are ``tile`` long, so consecutive chunks share one frame;
    the last one ends at ``length`` (an extra short chunk is appended when the regular ones stop short).
    """
    if tile < 2:
        raise ValueError(f"time tile must be at least 2 frames, got {tile}")
    starts = list(range(0, length, tile - 1))
    if len(starts) == 1:
        return [(0, length)]
    chunks = [(starts[i], starts[i + 1] + 1) for i in range(len(starts) - 1)]
    last_start, last_end = chunks[-1]
    if last_end > length:
        chunks[-1] = (last_start, length)
    elif last_end < length:
        chunks.append((starts[-1], length))
    return chunks


def _blend_weights(extent: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear blend weights ``(y / extent, 1 - y / extent)`` for ``y = 0 .. extent - 1``, each computed in
    float64 and then cast (as the reference's Python-float factors are)."""
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    return ramp.to(like.device, like.dtype), (1 - ramp).to(like.device, like.dtype)


def _blend_rows(above: torch.Tensor, tile: torch.Tensor, extent: int) -> None:
    """Blend the top rows of ``tile`` (in place) with the bottom rows of ``above`` (dim -2)."""
    extent = min(above.shape[-2], tile.shape[-2], extent)
    if extent <= 0:
        return
    w_tile, w_above = _blend_weights(extent, tile)
    upper = above[..., above.shape[-2] - extent :, :]
    tile[..., :extent, :] = upper * w_above.view(-1, 1) + tile[..., :extent, :] * w_tile.view(-1, 1)


def _blend_cols(left: torch.Tensor, tile: torch.Tensor, extent: int) -> None:
    """Blend the left columns of ``tile`` (in place) with the right columns of ``left`` (dim -1)."""
    extent = min(left.shape[-1], tile.shape[-1], extent)
    if extent <= 0:
        return
    w_tile, w_left = _blend_weights(extent, tile)
    tile[..., :extent] = left[..., left.shape[-1] - extent :] * w_left + tile[..., :extent] * w_tile


@dataclass(frozen=True)
class _SpatialPlan:
    """Spatial tiling in input units (``tile``, ``stride``) and output units (``blend``, ``keep``)."""

    tile: int
    stride: int
    blend: int
    keep: int


def _spatial_plan(tile_in: int, scale_num: int, scale_den: int, overlap: float, what: str) -> _SpatialPlan:
    """The reference's tile arithmetic for input tiles of ``tile_in``, the output being ``scale_num /
    scale_den`` times the input: stride ``int(tile_in * (1 - overlap))``, blend
    ``int(tile_out * overlap)``, keep ``tile_out - blend``.

    The tiles only line up (every kept part abutting the next) when ``stride`` maps to exactly ``keep``
    output pixels; other settings are a ``ValueError``.
    """
    tile_out = tile_in * scale_num // scale_den
    if tile_out * scale_den != tile_in * scale_num:
        raise ValueError(f"{what}: tile of {tile_in} does not map to a whole number of output pixels")
    stride = int(tile_in * (1 - overlap))
    blend = int(tile_out * overlap)
    keep = tile_out - blend
    if stride < 1 or stride * scale_num != keep * scale_den:
        raise ValueError(
            f"{what}: tile {tile_in} with overlap {overlap} gives stride {stride} (input) but keeps {keep} "
            f"(output); choose a tile size whose overlap is a whole number of latent pixels"
        )
    return _SpatialPlan(tile=tile_in, stride=stride, blend=blend, keep=keep)


def _tiled_spatial(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    plan: _SpatialPlan,
    write: Callable[[torch.Tensor, int, int], None],
) -> None:
    """Run ``fn`` on overlapping spatial tiles of ``x`` ``[..., H, W]`` and hand each blended, cropped
    tile to ``write(crop, row0, col0)`` (output coordinates).

    Tiles start every ``plan.stride`` input pixels (reference placement) and are computed one at a time,
    as :func:`_blend_tiles` consumes them.
    """
    rows, cols = _tile_starts(x.shape[-2], plan), _tile_starts(x.shape[-1], plan)
    tiles = (fn(x[..., r : r + plan.tile, c : c + plan.tile]) for r in rows for c in cols)
    _blend_tiles(tiles, len(rows), len(cols), plan, write)


def _tile_starts(size: int, plan: _SpatialPlan) -> range:
    """Input offsets of the tiles along a side of ``size`` input pixels (the reference's placement)."""
    return range(0, size, plan.stride)


def _blend_tiles(
    tiles: Iterable[torch.Tensor],
    n_rows: int,
    n_cols: int,
    plan: _SpatialPlan,
    write: Callable[[torch.Tensor, int, int], None],
) -> None:
    """Blend the outputs of an ``n_rows x n_cols`` grid of tiles (``tiles`` in row-major order, each
    modified in place) and hand each cropped tile to ``write(crop, row0, col0)`` (output coordinates).

    Each tile is blended with the tile above, then with the tile to its left, both taken *after* their
    own blending; then its first ``plan.keep`` rows and columns are kept. Only the edge strips needed by
    the next tiles are retained, so a lazy ``tiles`` keeps one tile alive at a time.
    """
    it = iter(tiles)
    above: list[torch.Tensor | None] = [None] * n_cols
    for i in range(n_rows):
        left: torch.Tensor | None = None
        for j in range(n_cols):
            tile = next(it)
            if i > 0 and above[j] is not None:
                _blend_rows(above[j], tile, plan.blend)
            if j > 0 and left is not None:
                _blend_cols(left, tile, plan.blend)
            write(tile[..., : plan.keep, : plan.keep], i * plan.keep, j * plan.keep)
            if plan.blend > 0:
                above[j] = tile[..., tile.shape[-2] - min(plan.blend, tile.shape[-2]) :, :].clone()
                left = tile[..., tile.shape[-1] - min(plan.blend, tile.shape[-1]) :].clone()
            del tile


@dataclass(frozen=True)
class DecodeTile:
    """One independent piece of :meth:`CausalVAE.decode`: latent frames ``[t0, t1)`` (time chunk
    ``chunk``), rows ``[row, row + height)`` and columns ``[col, col + width)``, decoded on its own.
    Row ``i``, column ``j`` of its chunk's tile grid. An untiled decode is a single tile of the whole latent.
    """

    chunk: int
    t0: int
    t1: int
    i: int
    j: int
    row: int
    col: int
    height: int
    width: int

    @property
    def cost(self) -> int:
        """Latent voxels decoded (the decode's cost is about proportional)."""
        return (self.t1 - self.t0) * self.height * self.width


# -- the model --------------------------------------------------------------------------------------------


def _check_video(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what} must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels, got shape {tuple(x.shape)}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{what} is empty: shape {tuple(x.shape)}")


class CausalVAE(nn.Module):
    """Open-Sora-Plan v1.1.0 CausalVAE (``CausalVAEModel``): encoder, ``quant_conv``, ``post_quant_conv``,
    decoder. Layouts: pixels ``[B, 3, T, H, W]`` in ``[-1, 1]``; unscaled latents ``[B, 4, t, h, w]``.

    Args:
        config: the architecture (default: the released VAE).
        tile_latent_min_size, tile_latent_min_size_t, tile_sample_min_size, tile_sample_min_size_t,
        tile_overlap_factor: override the config's tiling knobs (module docstring). They are plain
            attributes and may also be changed after construction.
    """

    config_class = CausalVAEConfig
    ignored_checkpoint_keys: tuple[str, ...] = ("loss.*",)
    """Training-loss parameters (LPIPS, discriminator, logvar) a training checkpoint may carry."""

    def __init__(
        self,
        config: CausalVAEConfig | None = None,
        *,
        tile_latent_min_size: int | None = None,
        tile_latent_min_size_t: int | None = None,
        tile_sample_min_size: int | None = None,
        tile_sample_min_size_t: int | None = None,
        tile_overlap_factor: float | None = None,
    ) -> None:
        super().__init__()
        overrides = {
            "tile_latent_min_size": tile_latent_min_size,
            "tile_latent_min_size_t": tile_latent_min_size_t,
            "tile_sample_min_size": tile_sample_min_size,
            "tile_sample_min_size_t": tile_sample_min_size_t,
            "tile_overlap_factor": tile_overlap_factor,
        }
        config = config if config is not None else CausalVAEConfig()
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        self.config = config
        self.encoder = CausalVAEEncoder(config)
        self.decoder = CausalVAEDecoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, 1)
        self.latent_channels: int = config.embed_dim
        self.scaling_factor: float = float(config.scaling_factor)
        self.spatial_downsample: int = config.spatial_downsample
        self.temporal_downsample: int = config.temporal_downsample
        self.tile_latent_min_size: int = config.tile_latent_min_size
        self.tile_latent_min_size_t: int = config.tile_latent_min_size_t
        self.tile_sample_min_size: int = config.tile_sample_min_size
        self.tile_sample_min_size_t: int = config.tile_sample_min_size_t
        self.tile_overlap_factor: float = float(config.tile_overlap_factor)

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CausalVAEConfig) -> CausalVAE:
        """Build (randomly initialised) from an official ``config.json`` dict (plus the extensions) or a
        :class:`CausalVAEConfig`."""
        if isinstance(config, CausalVAEConfig):
            return cls(config)
        return cls(CausalVAEConfig.from_json_dict(config))

    @classmethod
    def from_pretrained(
        cls, folder: PathLike, dtype: torch.dtype | None = None, device: DeviceLike = None
    ) -> CausalVAE:
        """Load an official-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
        ``.bin``) in eval mode, cast to ``dtype`` (default: torch's default dtype; the reference runs in
        fp16) on ``device`` (default CPU).

        Every key and shape is checked; :class:`~videosys.models.weights.CheckpointMismatchError` names
        the missing, unexpected and wrongly shaped keys. ``loss.*`` keys are dropped (logged).
        """
        return load_pretrained(cls.from_config, folder, dtype=dtype, device=device, weights_name=WEIGHTS_NAME)

    # -- sizes ----------------------------------------------------------------------------------------------

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` video: ``(num_frames - 1) // 4 + 1`` (65 -> 17, 221 -> 56).

        Raises ``ValueError`` unless ``num_frames - 1`` is a multiple of 4 (1, 5, 9, ..., 65, ...).
        """
        f = self.temporal_downsample
        if not is_int(num_frames) or num_frames < 1 or (num_frames - 1) % f:
            raise ValueError(
                f"CausalVAE frame count must be 1 + {f} * k (num_frames - 1 a multiple of {f}: "
                f"1, {1 + f}, {1 + 2 * f}, ..., 65, ..., 221), got {num_frames!r}"
            )
        return (num_frames - 1) // f + 1

    def decoded_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames: ``1 + 4 * (latent_frames - 1)``."""
        if not is_int(latent_frames) or latent_frames < 1:
            raise ValueError(f"latent frame count must be a positive integer, got {latent_frames!r}")
        return 1 + self.temporal_downsample * (latent_frames - 1)

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(latent frames, height // 8, width // 8)`` of a ``num_frames x height x width`` video."""
        f = self.spatial_downsample
        if height < f or width < f:
            raise ValueError(f"frames of {height}x{width} are smaller than the VAE's {f}x{f} latent pixel")
        return (self.latent_frames(num_frames), height // f, width // f)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.conv.weight.device

    # -- encode ---------------------------------------------------------------------------------------------

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: mean and log-variance stacked on channels."""
        return self.quant_conv(self.encoder(x))

    def _tiled_moments(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's ``tiled_encode``: time chunks of ``tile_sample_min_size_t`` frames (one shared
        frame; later chunks drop their first latent frame), spatial tiles of ``tile_sample_min_size``."""
        s = self.spatial_downsample
        plan = _spatial_plan(self.tile_sample_min_size, 1, s, self.tile_overlap_factor, "tiled encode")
        b, _, t, h, w = x.shape
        out = x.new_empty((b, 2 * self.latent_channels, self.latent_frames(t), h // s, w // s))
        pos = 0
        for k, (t0, t1) in enumerate(time_chunks(t, self.tile_sample_min_size_t)):
            drop = 1 if k > 0 else 0
            n = self.latent_frames(t1 - t0) - drop

            def write(crop: torch.Tensor, r: int, c: int, pos: int = pos, drop: int = drop, n: int = n) -> None:
                out[:, :, pos : pos + n, r : r + crop.shape[-2], c : c + crop.shape[-1]] = crop[:, :, drop:]

            _tiled_spatial(x[:, :, t0:t1], self._moments, plan, write)
            pos += n
        return out

    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
        *,
        tiled: bool = False,
    ) -> torch.Tensor:
        """Unscaled latent ``[B, 4, (T - 1) / 4 + 1, H // 8, W // 8]`` of ``x`` ``[B, 3, T, H, W]`` in ``[-1, 1]``.

        The posterior mean, or with ``sample`` a draw ``mean + exp(logvar / 2) * noise`` (logvar clamped
        to :data:`LOGVAR_RANGE`); the noise is drawn in float32 from ``generator`` on its device (CPU
        without one) and then moved, so a seeded CPU generator gives the same latent everywhere.
        ``tiled``: the reference's tiled encode when ``x`` exceeds the sample tiles (approximate).
        """
        _check_video(x, self.config.in_channels, "encode input")
        self.latent_size(x.shape[2], x.shape[3], x.shape[4])  # validates frames and size
        x = x.to(self.dtype)
        exceeds = (
            x.shape[2] > self.tile_sample_min_size_t
            or x.shape[3] > self.tile_sample_min_size
            or x.shape[4] > self.tile_sample_min_size
        )
        moments = self._tiled_moments(x) if tiled and exceeds else self._moments(x)
        mean, logvar = moments.chunk(2, dim=1)
        if not sample:
            return mean
        logvar = logvar.clamp(*LOGVAR_RANGE)
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        return mean + torch.exp(0.5 * logvar) * noise.to(device=mean.device, dtype=mean.dtype)

    # -- decode ---------------------------------------------------------------------------------------------

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """``decoder(post_quant_conv(z))`` of one tile (or of the whole latent)."""
        return self.decoder(self.post_quant_conv(z))

    def _decode_plan(self) -> _SpatialPlan:
        return _spatial_plan(self.tile_latent_min_size, self.spatial_downsample, 1, self.tile_overlap_factor,
                             "tiled decode")

    def _exceeds_tile(self, z: torch.Tensor) -> bool:
        return (
            z.shape[2] > self.tile_latent_min_size_t
            or z.shape[3] > self.tile_latent_min_size
            or z.shape[4] > self.tile_latent_min_size
        )

    def decode_items(self, z: torch.Tensor, *, tiled: bool = True) -> list[DecodeTile]:
        """The independent pieces of ``decode(z, tiled=tiled)`` in decode order (chunk, then row-major
        tiles): every time chunk's spatial tiles when the decode is tiled, else one tile of the whole
        latent. :meth:`decode_item` decodes one, :meth:`assemble` blends and stitches their outputs."""
        _check_video(z, self.latent_channels, "decode input")
        _, _, t, h, w = z.shape
        if not (tiled and self._exceeds_tile(z)):
            return [DecodeTile(chunk=0, t0=0, t1=t, i=0, j=0, row=0, col=0, height=h, width=w)]
        plan = self._decode_plan()
        rows, cols = _tile_starts(h, plan), _tile_starts(w, plan)
        return [
            DecodeTile(chunk=k, t0=t0, t1=t1, i=i, j=j, row=r, col=c,
                       height=min(plan.tile, h - r), width=min(plan.tile, w - c))
            for k, (t0, t1) in enumerate(time_chunks(t, self.tile_latent_min_size_t))
            for i, r in enumerate(rows)
            for j, c in enumerate(cols)
        ]

    @staticmethod
    def _tile_input(z: torch.Tensor, tile: DecodeTile) -> torch.Tensor:
        return z[:, :, tile.t0 : tile.t1, tile.row : tile.row + tile.height, tile.col : tile.col + tile.width]

    @torch.no_grad()
    def decode_item(self, z: torch.Tensor, tile: DecodeTile) -> torch.Tensor:
        """The raw (unblended, uncropped) decode ``[B, 3, 1 + 4 (t1 - t0 - 1), 8 height, 8 width]`` of one
        tile of the unscaled latent ``z`` (the whole latent :meth:`decode` takes)."""
        return self._decode_tile(self._tile_input(z, tile).to(self.dtype))

    def assemble(self, z: torch.Tensor, tiles: Sequence[DecodeTile], outputs: Iterable[torch.Tensor]) -> torch.Tensor:
        """The decoded video of ``z`` from the :meth:`decode_item` outputs of ``tiles`` (all of
        :meth:`decode_items`, in order): each chunk's tiles blended and cropped exactly as the tiled
        decode does, later chunks losing their first frame. ``outputs`` may be lazy (consumed in order,
        one tile alive at a time) and are modified in place. ``z`` only gives the shape."""
        if len(tiles) == 1:  # untiled (a tiled decode always has several pieces)
            return next(iter(outputs))
        s = self.spatial_downsample
        plan = self._decode_plan()
        b, _, t, h, w = z.shape
        n_rows, n_cols = len(_tile_starts(h, plan)), len(_tile_starts(w, plan))
        per_chunk = n_rows * n_cols
        if len(tiles) % per_chunk:
            raise ValueError(f"assemble: {len(tiles)} tiles are not whole chunks of {n_rows} x {n_cols}")
        it = iter(outputs)
        out: torch.Tensor | None = None
        pos = 0
        for k in range(len(tiles) // per_chunk):
            first = tiles[k * per_chunk]
            drop = 1 if k > 0 else 0
            n = self.decoded_frames(first.t1 - first.t0) - drop

            def write(crop: torch.Tensor, r: int, c: int, pos: int = pos, drop: int = drop, n: int = n) -> None:
                nonlocal out
                if out is None:
                    out = crop.new_empty((b, crop.shape[1], self.decoded_frames(t), h * s, w * s))
                out[:, :, pos : pos + n, r : r + crop.shape[-2], c : c + crop.shape[-1]] = crop[:, :, drop:]

            _blend_tiles((next(it) for _ in range(per_chunk)), n_rows, n_cols, plan, write)
            pos += n
        assert out is not None
        return out

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        tiles = self.decode_items(z)
        return self.assemble(z, tiles, (self._decode_tile(self._tile_input(z, tile)) for tile in tiles))

    @overload
    def decode(self, z: torch.Tensor, *, tiled: bool = True, parallel: None = None) -> torch.Tensor: ...

    @overload
    def decode(self, z: torch.Tensor, *, tiled: bool = True, parallel: ParallelState) -> torch.Tensor | None: ...

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, *, tiled: bool = True, parallel: ParallelState | None = None
    ) -> torch.Tensor | None:
        """Frames ``[B, 3, 1 + 4 (t - 1), 8 h, 8 w]`` (about ``[-1, 1]``) of an unscaled latent ``[B, 4, t, h, w]``.

        With ``tiled`` (default, as the official pipeline) a latent longer than
        ``tile_latent_min_size_t`` frames or larger than ``tile_latent_min_size`` is decoded in
        overlapping chunks and tiles (module docstring): bounded memory, the official pipeline's output,
        but not equal to the untiled decode. Smaller latents are decoded whole either way.

        ``parallel``: every world rank of that state calls this with the same ``z``; the tiles (all
        chunks') are split over the ranks by latent volume (:func:`~videosys.parallel.decode.decode_split`)
        and gathered on rank 0, which blends them as above and returns the video (equal to the
        single-process decode up to float rounding); the other ranks return ``None``. Memory is then no
        longer bounded by one tile: rank 0 holds every raw tile (about ``(tile / keep)^2``, 1.8x, the
        video) plus the video. An untiled decode is one piece, decoded by rank 0 alone.
        """
        _check_video(z, self.latent_channels, "decode input")
        if parallel is not None and parallel.world_size > 1:
            tiles = self.decode_items(z, tiled=tiled)
            costs = [tile.cost for tile in tiles] if len(tiles) > 1 else None
            outputs = decode_split(tiles, lambda tile: self.decode_item(z, tile), parallel, z.device, costs=costs)
            if outputs is None:
                return None
            outputs.reverse()  # hand them over one by one, so that each is freed once blended
            return self.assemble(z, tiles, (outputs.pop() for _ in range(len(tiles))))
        z = z.to(self.dtype)
        if tiled and self._exceeds_tile(z):
            return self._tiled_decode(z)
        return self._decode_tile(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))`` (untiled encode, tiled decode)."""
        return self.decode(self.encode(x, generator=generator, sample=sample))
