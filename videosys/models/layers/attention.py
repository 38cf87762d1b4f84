"""Attention: the backend chooser (flash-attn, two matmuls for short sequences, or PyTorch SDPA) and a
multi-head attention module whose parameter names follow diffusers' ``Attention`` (``to_q``, ``to_k``,
``to_v``, ``to_out.0``), so that diffusers checkpoints load without renaming.

Tensors handed to :func:`scaled_dot_product` are laid out ``[batch, heads, seq, head_dim]``. A mask is
boolean, ``True`` = attend, broadcastable as ``[batch, 1 or heads, q_len or 1, kv_len]``.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from videosys.kernels import fused_temporal_attention, fused_temporal_attention_applies
from videosys.kernels.float8 import Float8Rows

from .float8 import linear, stacked_linear
from .folded_attention import FoldedContextCache, attend_module_folded, folds

logger = logging.getLogger(__name__)

FLASH = "flash"
SDPA = "sdpa"

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256

#: The order torch SDPA tries its kernels in on CUDA. cuDNN first: on Hopper it is the fastest at the
#: spatial shapes of these models (see scripts/bench_attention.py and docs/benchmarks.md); a backend that
#: does not accept a call (dtype, head size, mask) passes it to the next.
CUDA_SDPA_ORDER = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH)

#: Sequences this short on both sides (the temporal attention of these models: 15-16 frames) run as two
#: batched matmuls with a float32 softmax: on an H200 0.85 ms against flash's 1.00 and cuDNN's 1.21 at
#: Open-Sora's temporal shape, 0.31 against 0.66 / 0.78 at Latte's (scripts/bench_attention.py).
SHORT_SEQUENCE = 32


@functools.lru_cache(maxsize=1)
def _flash_attn_func() -> Optional[Callable[..., torch.Tensor]]:
    """``flash_attn.flash_attn_func`` when the package imports, else ``None`` (checked once)."""
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a broken build raising something else on import
        logger.debug("flash-attn not usable (%s: %s); attention uses torch SDPA", type(exc).__name__, exc)
        return None
    logger.debug("flash-attn available")
    return flash_attn_func


@torch.compiler.assume_constant_result
def flash_available() -> bool:
    """Whether the flash-attn package imports in this process.

    A constant to ``torch.compile``: Dynamo calls it once while tracing and bakes the answer in, instead of
    tracing the import attempt, which broke every compiled attention piece in two graphs."""
    return _flash_attn_func() is not None


def select_backend(q: torch.Tensor, mask: Optional[torch.Tensor] = None) -> str:
    """The backend :func:`scaled_dot_product` uses for ``q`` (``[B, H, S, D]``) and ``mask``.

    ``"flash"`` when flash-attn imports, ``q`` is a CUDA tensor in fp16/bf16, ``head_dim <= 256`` and a
    multiple of 8, and there is no mask; ``"sdpa"`` otherwise.
    """
    head_dim = q.shape[-1]
    if (
        flash_available()  # first, so that compiled code on any device meets it (tests/test_attention.py)
        and mask is None
        and q.is_cuda
        and q.dtype in _FLASH_DTYPES
        and head_dim <= _FLASH_MAX_HEAD_DIM
        and head_dim % 8 == 0
    ):
        return FLASH
    return SDPA


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v for ``[B, H, S, D]`` tensors; returns ``[B, H, S_q, D]``.

    ``mask`` (boolean, ``True`` = attend) broadcasts as ``[B, 1 or H, S_q or 1, S_kv]``.
    Runs on flash-attn when :func:`select_backend` says so; else on CUDA as two matmuls when both sequences
    are at most :data:`SHORT_SEQUENCE` long, or torch SDPA in :data:`CUDA_SDPA_ORDER`; on the CPU torch SDPA.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = attend), got {mask.dtype}")
    if select_backend(q, mask) == FLASH:
        flash = _flash_attn_func()
        assert flash is not None
        # flash-attn wants [B, S, H, D]; a transpose keeps the last dim contiguous.
        out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if q.is_cuda and q.shape[-2] <= SHORT_SEQUENCE and k.shape[-2] <= SHORT_SEQUENCE:
        return matmul_attention(q, k, v, mask)
    if q.is_cuda:
        with sdpa_kernel(list(CUDA_SDPA_ORDER), set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Attention as ``softmax(q k^T / sqrt(d)) v`` with two batched matmuls and a float32 softmax (for short
    sequences, where the fused kernels' tiles are mostly empty). A query row whose keys are all masked
    gives zeros, as the fused kernels do not define it."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32)
    if mask is not None:
        weights = weights.nan_to_num_(0.0)
    return torch.matmul(weights.to(v.dtype), v)


class Attention(nn.Module):
    """Multi-head self- or cross-attention with diffusers' parameter names.

    Args:
        query_dim: channels of the query input (and of the output).
        heads: number of heads.
        dim_head: channels per head.
        cross_attention_dim: channels of the key/value input for cross-attention (``None``: self-attention,
            keys and values come from ``query_dim`` inputs).
        bias: bias on ``to_q``, ``to_k``, ``to_v``.
        out_bias: bias on ``to_out.0``.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: Optional[int] = None,
        bias: bool = False,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.inner_dim = heads * dim_head
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, self.inner_dim, bias=bias)
        # A ModuleList so the checkpoint key is ``to_out.0`` as in diffusers (whose ``to_out.1`` is a
        # parameterless dropout).
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim, bias=out_bias)])
        #: an unmasked self-attention over at most 64 tokens (the temporal blocks) runs as one fused kernel
        #: where it applies (:meth:`short_self_attention`); ``False`` keeps the torch path
        self.fused_kernel = True
        #: a cross-attention to a short context runs through the folded projections where that pays
        #: (:mod:`videosys.models.layers.folded_attention`); ``False`` keeps the unfolded path
        self.fold_short_context = True

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.dim_head).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        folded: FoldedContextCache | None = None,
    ) -> torch.Tensor:
        """Attend ``hidden_states`` ``[B, S, query_dim]`` to itself, or to ``encoder_hidden_states``
        ``[B, L, cross_attention_dim]``.

        ``attention_mask``: optional boolean key mask ``[B, L_kv]`` (``True`` = attend). ``folded``: where a
        short context's folded form is kept across calls (one cache per context and mask: a request's
        caption), or ``None`` (folded anew). Returns ``[B, S, query_dim]``.
        """
        if (
            encoder_hidden_states is None
            and attention_mask is None
            and self.fused_kernel
            and fused_temporal_attention_applies(hidden_states, hidden_states.shape[1], self.dim_head,
                                                 self.parameters())
        ):
            return self.short_self_attention(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None and (
            attention_mask.ndim != 2 or attention_mask.shape != (context.shape[0], context.shape[1])
        ):
            raise ValueError(
                f"attention_mask must be [batch, kv_len] = {[context.shape[0], context.shape[1]]}, "
                f"got {list(attention_mask.shape)}"
            )
        key_mask = None if attention_mask is None else attention_mask.to(torch.bool)
        if (
            encoder_hidden_states is not None
            and self.fold_short_context
            and not isinstance(hidden_states, Float8Rows)
            and folds(hidden_states, self.heads, context.shape[1], self.parameters(), kernels=self.fused_kernel)
        ):
            return attend_module_folded(self, hidden_states, context.shape[1],
                                        lambda: (linear(self.to_k, context), linear(self.to_v, context)),
                                        self.to_q, self.to_out[0], self.heads, key_mask, cache=folded)
        q = self._split_heads(linear(self.to_q, hidden_states))
        k = self._split_heads(linear(self.to_k, context))
        v = self._split_heads(linear(self.to_v, context))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = scaled_dot_product(q, k, v, mask)
        b, _, s, _ = out.shape
        out = out.transpose(1, 2).reshape(b, s, self.inner_dim).to(q.dtype)
        return self.to_out[0](out)

    def short_self_attention(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Self-attention of ``hidden_states`` ``[B, S, query_dim]`` (``S`` <= 64) through
        :func:`videosys.kernels.fused_temporal_attention`, as ``B`` single-position sequences of ``S``
        "frames" (:meth:`_fused_over_frames`). The same function as :meth:`forward` without a mask, within
        the dtype's rounding."""
        b, s, c = hidden_states.shape
        return self._fused_over_frames(hidden_states.reshape(b, s, 1, c)).view(b, s, -1)

    def over_frames(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Self-attention along the frame axis of frame-major tokens ``[B, T, S, query_dim]`` (each of the
        ``S`` positions attends over its ``T`` frames) -> ``[B, T, S, query_dim]``, without regrouping the
        tokens where the fused kernel applies (:meth:`_fused_over_frames`); elsewhere :meth:`forward` on
        the tokens regrouped as ``[B*S, T, query_dim]`` and back."""
        b, t, s, c = hidden_states.shape
        if self.fused_kernel and fused_temporal_attention_applies(hidden_states, t, self.dim_head, self.parameters()):
            return self._fused_over_frames(hidden_states)
        if isinstance(hidden_states, Float8Rows):  # regrouped below: float8 rows are for the fused path only
            hidden_states = hidden_states.dequantize()
        out = self(hidden_states.transpose(1, 2).reshape(b * s, t, c))
        return out.view(b, s, t, -1).transpose(1, 2)

    def _fused_over_frames(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, S, query_dim]`` -> ``[B, T, S, query_dim]``: one GEMM for q, k and v (the three weights side
        by side), the fused kernel over the ``T`` frames of each position, ``to_out``."""
        qkv = stacked_linear((self.to_q, self.to_k, self.to_v), hidden_states)
        return self.to_out[0](fused_temporal_attention(qkv, self.heads))
