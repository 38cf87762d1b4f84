"""Latte: a text-to-video diffusion transformer of interleaved spatial and temporal blocks.

State-dict keys are identical to diffusers' ``LatteTransformer3DModel``, so its checkpoints
(``maxin-cn/Latte-1``, folder ``transformer/``) load unchanged, and the forward computes the same
function. The skeleton is shared with Open-Sora-Plan v1.1, which subclasses this class and overrides
the hooks :meth:`LatteTransformer3D.temporal_pos_table` (the table) and
:meth:`LatteTransformer3D.adds_temporal_pos` (before which temporal blocks it is added).

Sequence parallel (``forward(..., parallel=state)`` with ``state.sp_size > 1``): each rank keeps its
chunk of the frames (zero-padded when the frame count does not divide), runs the spatial blocks and
every per-token piece on them, re-shards around the temporal self-attention only (two all-to-alls
inside the PAB-wrapped compute, see :class:`~videosys.models.layers.blocks.FrameShards`) and gathers
the frames of the final projection, so that every rank returns the whole output.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from videosys.pab import PABRun
from videosys.parallel import ParallelState, comm

from ..layers.blocks import SUPPORTED_ACTIVATIONS, FrameShards, LatteBlock
from ..layers.embeddings import (
    AdaLNSingle,
    CaptionProjection,
    PatchEmbed2D,
    get_1d_sincos_pos_embed,
)
from ..layers.folded_attention import FoldedContextCache
from ..layers.norms import modulate
from ..weights import load_pretrained

logger = logging.getLogger(__name__)

SUPPORTED_NORM_TYPES = ("ada_norm_single",)


@dataclass(frozen=True)
class LatteConfig:
    """Fields of diffusers' ``LatteTransformer3DModel`` config; the defaults are Latte-1's values.

    ``num_embeds_ada_norm`` is carried for completeness (adaLN-single does not use it); ``dropout``
    and diffusers bookkeeping keys (``_class_name``...) are ignored by :meth:`from_json_dict`.
    """

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = 8
    num_layers: int = 28
    cross_attention_dim: int | None = 1152
    attention_bias: bool = True
    sample_size: int = 64
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = 1000
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 4096
    video_length: int = 16

    def __post_init__(self) -> None:
        if self.activation_fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"activation_fn {self.activation_fn!r} not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if self.norm_type not in SUPPORTED_NORM_TYPES:
            raise ValueError(f"norm_type {self.norm_type!r} not supported (supported: {', '.join(SUPPORTED_NORM_TYPES)})")
        if self.in_channels is None or self.patch_size is None:
            raise ValueError("in_channels and patch_size are required")
        if self.caption_channels is None:
            raise ValueError("caption_channels is required (the caption projection is part of the model)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def resolved_out_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> LatteConfig:
        """Build from a diffusers ``config.json`` dict; keys that are not fields are ignored (logged)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            logger.debug("%s: ignoring config keys %s", cls.__name__, unknown)
        return cls(**{k: v for k, v in data.items() if k in names})


class LatteTransformer3D(nn.Module):
    """Latte denoiser. ``forward(x [B, C, F, H, W], t [B], text [B, L, caption_channels], mask [B, L])``."""

    config_class: ClassVar[type] = LatteConfig
    #: checkpoint keys the model knowingly does not use (exact names or fnmatch patterns).
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LatteConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.inner_dim = dim
        self.patch_size = config.patch_size
        self.out_channels = config.resolved_out_channels

        self.pos_embed = PatchEmbed2D(
            sample_size=config.sample_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            embed_dim=dim,
            interpolation_scale=max(config.sample_size // 64, 1),
        )
        self.transformer_blocks = nn.ModuleList(
            [self._make_block(config, config.cross_attention_dim) for _ in range(config.num_layers)]
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            [self._make_block(config, None) for _ in range(config.num_layers)]
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * self.out_channels)
        self.adaln_single = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)

        self.register_buffer("temp_pos_embed", torch.empty(0), persistent=False)
        self.init_nonpersistent_buffers()

    @staticmethod
    def _make_block(config: LatteConfig, cross_attention_dim: int | None) -> LatteBlock:
        return LatteBlock(
            config.inner_dim,
            config.num_attention_heads,
            config.attention_head_dim,
            cross_attention_dim=cross_attention_dim,
            attention_bias=config.attention_bias,
            activation_fn=config.activation_fn,
            norm_elementwise_affine=config.norm_elementwise_affine,
            norm_eps=config.norm_eps,
        )

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, data: Mapping[str, Any]) -> LatteTransformer3D:
        return cls(cls.config_class.from_json_dict(data))

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        variant: str | None = None,
    ) -> LatteTransformer3D:
        """Load a diffusers-format folder (``config.json`` + ``diffusion_pytorch_model*``)."""
        return load_pretrained(cls.from_config_dict, folder, dtype=dtype, device=device, variant=variant)

    def init_nonpersistent_buffers(self, device: str | torch.device | None = None) -> None:
        """(Re)build this module's own position-table buffer (``temp_pos_embed``)."""
        if device is None:
            device = self.proj_out.weight.device
        device = torch.device(device)
        if device.type == "meta":
            self.temp_pos_embed = torch.empty(1, self.config.video_length, self.inner_dim, device=device)
        else:
            self.temp_pos_embed = self._compute_temporal_pos_table(self.config.video_length, device)

    # -- temporal position hooks (overridden by Open-Sora-Plan) --------------------------------------
    def _compute_temporal_pos_table(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """``[1, num_frames, C]`` float32 sin-cos table over frame indices ``0 .. num_frames-1``."""
        positions = torch.arange(num_frames, device=device)
        return get_1d_sincos_pos_embed(self.inner_dim, positions).float().unsqueeze(0)

    def temporal_pos_table(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """The temporal table for ``num_frames`` frames (the buffer when ``num_frames == video_length``)."""
        buf = self.temp_pos_embed
        if buf.shape[1] == num_frames and buf.device == device and not buf.is_meta:
            return buf
        return self._compute_temporal_pos_table(num_frames, device)

    def adds_temporal_pos(self, block: int, num_frames: int) -> bool:
        """Whether the table is added before temporal block ``block``. Latte adds it before the first
        temporal block, and only for more than one frame."""
        return block == 0 and num_frames > 1

    def add_temporal_pos(
        self, hidden_states: torch.Tensor, block: int, num_frames: int, parallel: ParallelState | None = None
    ) -> torch.Tensor:
        """Called right before temporal block ``block`` (i.e. after spatial block ``block``) on the temporal
        blocks' layout: the frame-major ``[B * F, tokens, C]`` in one process, ``[B * tokens, F_local, C]``
        with ``parallel`` (frames sharded: this rank's chunk of the frames gets the table rows of those
        frames, padding frames zeros). ``num_frames`` is the video's true frame count."""
        if not self.adds_temporal_pos(block, num_frames):
            return hidden_states
        table = self.temporal_pos_table(num_frames, hidden_states.device).to(hidden_states.dtype)  # [1, F, C]
        if parallel is not None:
            return hidden_states + comm.shard(table, 1, parallel)
        n, s, c = hidden_states.shape
        return (hidden_states.view(-1, num_frames, s, c) + table[:, :, None]).view(n, s, c)

    # -- forward --------------------------------------------------------------------------------------
    @staticmethod
    def _key_mask(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
        """A boolean ``[B, L]`` key mask from a bool or 0/1 mask; ``None`` when nothing is masked."""
        if mask is None:
            return None
        if mask.shape != (batch, length):
            raise ValueError(
                f"encoder_attention_mask must be [batch, text_len] = {[batch, length]} (bool or 0/1, "
                f"True = keep), got {list(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("encoder_attention_mask must be boolean or 0/1 (True/1 = keep), not an additive bias")
            mask = mask != 0
        if bool(mask.all()):
            return None  # nothing masked: lets attention take the mask-free (flash) path
        return mask

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        pab: PABRun | None = None,
        parallel: ParallelState | None = None,
        folded: FoldedContextCache | None = None,
    ) -> torch.Tensor:
        """Predict ``[B, out_channels, F, H, W]`` from latents ``[B, in_channels, F, H, W]``.

        Args:
            hidden_states: the noisy latents.
            timestep: ``[B]`` (or a scalar, shared by the batch).
            encoder_hidden_states: text features ``[B, L, caption_channels]``.
            encoder_attention_mask: ``[B, L]`` bool or 0/1 (``True`` = keep) or ``None``.
            pab: the request's PAB run (``begin_call()`` already called for this step), or ``None``.
                Under sequence parallel its kept outputs are this rank's shards.
            parallel: this rank's parallel state; with ``sp_size > 1`` the frames are split over the
                sequence-parallel ranks (every rank passes the same inputs and gets the whole output).
            folded: where the cross-attentions keep the caption's folded form from one call to the next:
                one cache per caption and mask (a request's; the pipeline makes it), or ``None``.
        """
        b, _, f, h, w = hidden_states.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"latent height/width {h}x{w} must be multiples of patch_size {p}")
        gh, gw = h // p, w // p
        n = gh * gw
        sp = parallel if parallel is not None and parallel.sp_enabled else None
        shards = None if sp is None else FrameShards(sp, videos=b, frames=f, tokens=n)
        if sp is not None:
            # This rank's frames, taken before the (per-frame) patch embedding: fl = ceil(f / sp) of them.
            hidden_states = comm.shard(hidden_states, 2, sp)
        fl = hidden_states.shape[2]  # local frames (f without sequence parallel)

        # [B, C, F, H, W] -> (B*F) frames of n patch tokens, frame-major within a video.
        x = hidden_states.permute(0, 2, 1, 3, 4).reshape(b * fl, -1, h, w)
        x = self.pos_embed(x)  # [B*F, n, D]

        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        t = t.reshape(-1)
        if t.shape[0] != b:
            raise ValueError(f"timestep must be a scalar or [batch={b}], got shape {list(t.shape)}")
        t_mod, t_emb = self.adaln_single(t, hidden_dtype=x.dtype)  # [B, 6D], [B, D]

        text = self.caption_projection(encoder_hidden_states)  # [B, L, D]
        mask = self._key_mask(encoder_attention_mask, b, text.shape[1])

        # Modulation rows and text are per video: blocks broadcast them over a video's F frame sequences
        # (spatial) or its n token sequences (temporal) without repeating them in memory.
        # Under sequence parallel F is the local fl here; only the temporal attention sees all frames.
        # Without sequence parallel the temporal blocks take the frame-major (B*F, n, D) tokens as they are
        # (their attention runs over the frames of each position); under SP they take (B*n, F_local, D).
        for i, (spatial, temporal) in enumerate(zip(self.transformer_blocks, self.temporal_transformer_blocks)):
            x = spatial(x, t_mod, text, mask, pab=pab, kind="spatial", block=i, folded=folded)
            if sp is None:
                # (the hook is called with three arguments when not sharded: subclasses/tests may replace it)
                x = self.add_temporal_pos(x, i, f)
                x = temporal(x, t_mod, pab=pab, kind="temporal", block=i, frames=f)
                continue
            x = x.reshape(b, fl, n, -1).transpose(1, 2).reshape(b * n, fl, -1)  # (B*F, n, D) -> (B*n, F, D)
            x = self.add_temporal_pos(x, i, f, sp)
            x = temporal(x, t_mod, pab=pab, kind="temporal", block=i, frame_shards=shards)
            x = x.reshape(b, n, fl, -1).transpose(1, 2).reshape(b * fl, n, -1)  # (B*n, F, D) -> (B*F, n, D)

        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # [B, 1, D] each
        x = self.norm_out(x).reshape(b, fl * n, -1)
        x = self.proj_out(modulate(x, shift, scale))  # [B, F*n, p*p*c], channel index (pi*p + qi)*c + ci
        if sp is not None:
            # every rank gets all frames; gathered after proj_out, where a token is p*p*c wide, not D
            x = comm.gather(x.reshape(b, fl, n, -1), sp, dim=1, full_size=f)

        c = self.out_channels
        x = x.reshape(b, f, gh, gw, p, p, c)
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # b c f gh pi gw qi
        return x.reshape(b, c, f, gh * p, gw * p)
