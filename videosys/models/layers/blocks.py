"""The Latte transformer block (diffusers ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"``),
shared by Latte and Open-Sora-Plan.

Every costly piece of the block goes through :func:`videosys.pab.run_module`, so Pyramid Attention
Broadcast can replace it with the output kept from an earlier denoiser call:

* self-attention (kind ``"spatial"`` or ``"temporal"``, the block's role): norm1, modulation, attn1.
  Returns the attention output *before* the timestep-dependent gate.
* cross-attention (kind ``"cross"``): attn2 on the un-normalised hidden states.
* MLP (kind ``"mlp"``, site = the block's role): norm2, modulation, feed-forward, before the gate.

Modulation rows: ``t_mod`` may hold one row per sequence (``[N, 6C]`` for ``N`` sequences) or one row
per *group* of consecutive sequences (``[G, 6C]`` with ``N = G * k``), e.g. one row per video for
the ``B * F`` frame sequences of a spatial block. Grouped rows are never repeated in memory; the
arithmetic is the same as with repeated rows.

Sequence parallel (frames sharded over the ranks, :class:`FrameShards`): a temporal block's
self-attention re-shards to all frames of a slice of the tokens and back *inside* its PAB-wrapped
compute function, so a broadcast step skips both all-to-alls with the attention. Everything else in
the block is per token and runs on the local frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from videosys.kernels.float8 import Float8Rows
from videosys.pab import PABRun, run_module
from videosys.parallel import ParallelState, comm

from .activations import linear_gelu_tanh
from .attention import Attention
from .float8 import mlp_gelu_tanh
from .folded_attention import FoldedContextCache
from .norms import add_norm_modulate, gated, norm_modulate

logger = logging.getLogger(__name__)

SUPPORTED_ACTIVATIONS = ("gelu-approximate",)


class GELUProjection(nn.Module):
    """``proj`` Linear followed by tanh-approximate GELU (diffusers ``GELU(approximate="tanh")``)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_gelu_tanh(x, self.proj)


class FeedForward(nn.Module):
    """``net.0`` (Linear C -> mult*C + GELU-tanh), ``net.1`` (no-op, dropout slot), ``net.2`` (Linear back)."""

    def __init__(self, dim: int, mult: int = 4, activation_fn: str = "gelu-approximate", bias: bool = True) -> None:
        super().__init__()
        if activation_fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"activation_fn {activation_fn!r} not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        inner = dim * mult
        self.net = nn.ModuleList([GELUProjection(dim, inner, bias=bias), nn.Identity(), nn.Linear(inner, dim, bias=bias)])

    def forward(self, x: torch.Tensor | Float8Rows) -> torch.Tensor:
        return mlp_gelu_tanh(x, self.net[0].proj, self.net[2])


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """View ``[N, S, C]`` as ``[groups, N // groups * S, C]`` (consecutive sequences share a group)."""
    n, s, c = x.shape
    if n == groups:
        return x
    if n % groups != 0:
        raise ValueError(f"{n} sequences cannot share {groups} modulation/context rows")
    return x.reshape(groups, (n // groups) * s, c)


@dataclass(frozen=True)
class FrameShards:
    """The frames of each video split over the sequence-parallel ranks (``comm``'s padded layout).

    The temporal layout of a rank is ``[videos * tokens, local_frames, C]``: every token of every video,
    this rank's (zero-padded) chunk of frames. Temporal attention needs every frame of a token, so it runs
    on ``[local_positions, frames, C]`` (a padded chunk of the ``videos * tokens`` positions, all true
    frames) between :meth:`to_all_frames` and :meth:`to_local_frames`. Both split or join the leading
    dimension, so the pieces leave and come back without a copy around the collective.
    """

    state: ParallelState
    videos: int
    frames: int  # true frame count (padding frames are dropped when frames are gathered)
    tokens: int  # true tokens per frame

    def to_all_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``[V * tokens, local_frames, C]`` -> ``[local_positions, frames, C]`` (one all-to-all)."""
        return comm.all_to_all(x, self.state, scatter_dim=0, gather_dim=1, gather_size=self.frames)

    def to_local_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_all_frames` (one all-to-all); padding frames come back as zeros."""
        return comm.all_to_all(x, self.state, scatter_dim=1, gather_dim=0, gather_size=self.videos * self.tokens)


class LatteBlock(nn.Module):
    """Pre-norm transformer block with adaLN-single modulation and optional cross-attention.

    Parameter names match diffusers' ``BasicTransformerBlock``: ``norm1``, ``attn1``, ``norm2``,
    ``attn2`` (only with ``cross_attention_dim``), ``ff.net.0.proj``, ``ff.net.2``, ``scale_shift_table``.
    """

    #: the broadcastable pieces :func:`videosys.models.compile.compile_pieces` compiles
    compile_pieces: ClassVar[tuple[str, ...]] = ("self_attention", "cross_attention", "mlp")

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        activation_fn: str = "gelu-approximate",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        ff_mult: int = 4,
        attention_out_bias: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(
            dim, num_attention_heads, attention_head_dim, bias=attention_bias, out_bias=attention_out_bias
        )
        self.attn2: Attention | None = None
        if cross_attention_dim is not None:
            self.attn2 = Attention(
                dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
                bias=attention_bias,
                out_bias=attention_out_bias,
            )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, mult=ff_mult, activation_fn=activation_fn)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        #: norm + modulation and gate (+ residual) as one kernel each where they apply (eager CUDA, Triton,
        #: fp16 / bf16); ``False`` keeps the torch path (:func:`videosys.kernels.use_fused_kernels`)
        self.fused_kernel = True
        #: float8 linears where they apply (opt-in: :func:`videosys.models.layers.float8.use_float8`)
        self.float8 = False

    def float8_linears(self) -> list[nn.Linear]:
        """The linears that read float8 rows when :attr:`float8` is on (attn1's q, k, v and the MLP's)."""
        return [self.attn1.to_q, self.attn1.to_k, self.attn1.to_v, self.ff.net[0].proj, self.ff.net[2]]

    # -- the three broadcastable pieces ------------------------------------------------------------
    def self_attention(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        scale: torch.Tensor,
        frame_shards: FrameShards | None = None,
        frames: int | None = None,
    ) -> torch.Tensor:
        """norm1 -> modulate -> attn1, before the gate. ``shift``/``scale``: ``[G, 1, C]`` (``x``: ``[N, S, C]``,
        ``N`` a multiple of ``G``). With ``frame_shards`` (a temporal block under sequence parallel; ``G``
        must then be the number of videos) the attention runs over all frames between two all-to-alls;
        the output has ``x``'s local layout. With ``frames`` (a temporal block on frame-major tokens: ``x``
        is ``[videos * frames, S, C]``) each of the ``S`` positions attends over its frames
        (:meth:`Attention.over_frames`); the output keeps that layout."""
        # float8 rows stay out of the temporal SP all-to-alls: moved through them (Float8Rows.moved, as
        # STDiT3's spatial ones) a Latte SP 2 rank took 80.9 ms per float8 call against 59.2 (H200,
        # scripts/bench_sp_rank.py --model latte --float8; docs/benchmarks.md, fourteenth session)
        h = norm_modulate(self.norm1, x, shift, scale, fused=self.fused_kernel,
                          float8=self.float8 and frame_shards is None)
        if frames is not None:
            n, s, c = h.shape
            return self.attn1.over_frames(h.reshape(n // frames, frames, s, c)).reshape(n, s, c)
        if frame_shards is None:
            return self.attn1(h)
        return frame_shards.to_local_frames(self.attn1(frame_shards.to_all_frames(h)))

    def cross_attention(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
        folded: FoldedContextCache | None = None,
    ) -> torch.Tensor:
        """attn2 of ``x`` ``[N, S, C]`` on ``context`` ``[G, L, C_ctx]`` (``N`` a multiple of ``G``: every
        sequence of a group sees the same context, so the group's queries are attended together, which is
        the same per-query result as repeating the context per sequence); ``folded``: the context's folded
        form kept across calls, or ``None``."""
        assert self.attn2 is not None
        n, s, c = x.shape
        out = self.attn2(_grouped(x, context.shape[0]), encoder_hidden_states=context, attention_mask=context_mask,
                         folded=folded)
        return out.reshape(n, s, c)

    def mlp(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, cross: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, ff(modulate(norm2(r))))`` before the gate, with ``r = x + cross`` (the cross-attention's
        residual add, made in the norm's pass) or ``x``."""
        if cross is None:
            return x, self.ff(norm_modulate(self.norm2, x, shift, scale, fused=self.fused_kernel, float8=self.float8))
        r, h = add_norm_modulate(self.norm2, x, cross, shift, scale, fused=self.fused_kernel, float8=self.float8)
        return r, self.ff(h)

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        t_mod: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        *,
        pab: PABRun | None = None,
        kind: str = "spatial",
        block: int = 0,
        frame_shards: FrameShards | None = None,
        frames: int | None = None,
        folded: FoldedContextCache | None = None,
    ) -> torch.Tensor:
        """One block step.

        Args:
            hidden_states: ``[N, S, C]`` sequences.
            t_mod: adaLN-single output ``[G, 6C]``, one row per sequence or per group of ``N // G``
                consecutive sequences.
            encoder_hidden_states: cross-attention context ``[G', L, C_ctx]`` (one per sequence or per
                group of consecutive sequences); required by a block with ``attn2``, ignored otherwise.
            encoder_attention_mask: boolean ``[G', L]`` key mask of the context (``True`` = attend).
            pab: the request's PAB run, or ``None``.
            kind: ``"spatial"`` or ``"temporal"``: the PAB kind of this block's self-attention and the
                site of its MLP.
            block: the block index, for PAB bookkeeping.
            frame_shards: for a temporal block whose frames are sharded over sequence-parallel ranks
                (``hidden_states`` holds this rank's frames, ``t_mod`` one row per video).
            frames: for a temporal block on frame-major tokens ``[videos * frames, S, C]`` (its
                self-attention runs over the frames of each position; ``t_mod`` one row per video).
            folded: the cross-attention context's folded form kept across calls (one cache per context,
                e.g. a request's caption), or ``None``.
        """
        x = hidden_states
        n, _, c = x.shape
        g = t_mod.shape[0]
        if frames is not None and (frame_shards is not None or frames <= 0 or n != g * frames):
            raise ValueError(f"frame-major tokens [videos * frames, S, C] = {list(x.shape)} do not hold {g} "
                             f"videos of {frames} frames (or frame_shards was given too)")
        mods = (self.scale_shift_table[None] + t_mod.reshape(g, 6, c)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each [G, 1, C]

        attn = run_module(
            pab, kind, block, lambda: self.self_attention(x, shift_msa, scale_msa, frame_shards, frames)
        )
        x = gated(attn, gate_msa, x, fused=self.fused_kernel)

        cross: torch.Tensor | None = None
        if self.attn2 is not None:
            if encoder_hidden_states is None:
                raise ValueError("this block has cross-attention (attn2) and needs encoder_hidden_states")
            x_in = x
            cross = run_module(
                pab, "cross", block, lambda: self.cross_attention(x_in, encoder_hidden_states, encoder_attention_mask, folded)
            )

        # the MLP's residual is x + cross: its norm kernel makes the sum; a broadcast MLP adds it here
        residual: list[torch.Tensor] = []

        def mlp() -> torch.Tensor:
            r, out = self.mlp(x, shift_mlp, scale_mlp, cross)
            residual.append(r)
            return out

        ff = run_module(pab, "mlp", block, mlp, site=kind)
        if not residual:
            residual.append(x if cross is None else x + cross)
        return gated(ff, gate_mlp, residual[0], fused=self.fused_kernel)
