"""Attention of many queries over a few keys (a video's tokens over its caption) in one Triton pass.

A DiT's cross-attention attends every video token to the caption's tokens: at Open-Sora's 480p 2s shape
47,700 queries per head against about a dozen keys for a short prompt (the pipelines cut the caption to the
tokens any sample uses). Its cost is reading q and writing the output; torch's fused attention kernels,
made for long key sequences, took 0.21 ms per call on an H200 where that traffic needs about 0.06
(docs/benchmarks.md, tenth session), 56 calls in every Open-Sora denoiser call.

:func:`text_attention`: one program per ``BLOCK_M`` queries of one (sample, head) loads its queries once,
walks the keys in blocks of ``BLOCK_N`` with an online softmax in float32 (the weights rounded to the input
dtype before the product with v, as flash attention rounds them), and writes the output in the
``[B, L_q, H, D]`` memory order the output projection reads (returned as its ``[B, H, L_q, D]`` view, like
:func:`torch.nn.functional.scaled_dot_product_attention` returns). A boolean key mask per sample is
honoured; a query whose keys are all masked gets zeros (as :func:`videosys.models.layers.attention.
matmul_attention` gives; the fused torch kernels leave it undefined).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from videosys.kernels.common import (
    HALF_DTYPES,
    autograd_off,
    cdiv,
    next_power_of_2,
    triton_available,
)

__all__ = [
    "MAX_KEYS",
    "text_attention",
    "text_attention_applies",
    "text_attention_reference",
]

#: The most keys the kernel takes (longer key sequences keep torch's attention kernels, made for them).
MAX_KEYS = 512
#: The fewest queries it takes: shorter query sequences keep the torch path (nothing to gain there).
MIN_QUERIES = 64
#: The widest head it takes.
MAX_HEAD_DIM = 128
#: Launch: queries per tile, keys per step (a caption of at most this many keys is held whole: one key
#: block, loaded once per program), query tiles per program (walked in a software-pipelined loop of
#: ``NUM_STAGES`` stages), warps.
BLOCK_M = 64
BLOCK_N = 64
TILES_PER_PROGRAM = 4
NUM_STAGES = 2
NUM_WARPS = 4


def _key_mask_rows(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """``mask`` (boolean ``[B or 1, 1, 1, L_k]``, as :func:`scaled_dot_product` takes a key mask, or
    ``[B or 1, L_k]``) as ``[B or 1, L_k]`` rows, or ``None`` when it is not a per-sample key mask."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.shape[-1] != keys or mask.shape[0] not in (1, batch):
        return None
    if mask.ndim == 4 and mask.shape[1] == mask.shape[2] == 1:
        return mask[:, 0, 0]
    return mask if mask.ndim == 2 else None


def text_attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None = None) -> bool:
    """Whether :func:`text_attention` takes these ``[B, H, L, D]`` tensors: CUDA fp16 / bf16, one dtype,
    the same ``B`` and ``H`` on all three, at least :data:`MIN_QUERIES` queries and at most
    :data:`MAX_KEYS` keys, ``D`` at most :data:`MAX_HEAD_DIM` with contiguous channels, no mask or a
    boolean per-sample key mask, Triton installed, outside ``torch.compile``'s tracing, and autograd
    recording nothing for them (:func:`autograd_off`)."""
    return (
        q.is_cuda
        and q.dtype in HALF_DTYPES
        and k.dtype == v.dtype == q.dtype
        and q.ndim == k.ndim == v.ndim == 4
        and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and k.shape[2] == v.shape[2]
        and q.shape[-1] == k.shape[-1] == v.shape[-1] <= MAX_HEAD_DIM
        and q.shape[2] >= MIN_QUERIES
        and 0 < k.shape[2] <= MAX_KEYS
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and (mask is None or _key_mask_rows(mask, q.shape[0], k.shape[2]) is not None)
        and not torch.compiler.is_compiling()
        and triton_available()
        and autograd_off(q, k, v)
    )


def text_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`text_attention` computes, in torch ops: float32 scores and softmax, the weights rounded
    to the input dtype, zeros for a query with no valid key."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    rows = _key_mask_rows(mask, q.shape[0], k.shape[2])
    if mask is not None and rows is None:
        raise ValueError(f"mask must be a boolean key mask [B, 1, 1, L_k] or [B, L_k], got {mask.dtype} "
                         f"{list(mask.shape)}")
    if rows is not None:
        scores = scores.masked_fill(~rows[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1).nan_to_num(0.0).to(v.dtype).float()
    return torch.matmul(weights, v.float()).to(v.dtype)


@torch.compiler.disable
def text_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
    tiles_per_program: int = TILES_PER_PROGRAM,
    num_stages: int = NUM_STAGES,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D)) v`` for ``q`` ``[B, H, L_q, D]`` and ``k`` / ``v`` ``[B, H, L_k, D]`` (any
    strides with contiguous channels), in one Triton kernel -> ``[B, H, L_q, D]``, a view of a contiguous
    ``[B, L_q, H, D]`` tensor. ``mask``: boolean key mask ``[B or 1, 1, 1, L_k]`` / ``[B or 1, L_k]``
    (``True`` = attend) or ``None``. ``block_m`` / ``block_n`` (powers of two, at least 16; a caption of
    at most ``block_n`` keys is one key block) / ``tiles_per_program`` / ``num_stages`` / ``num_warps``:
    launch tuning. Only for inputs :func:`text_attention_applies` accepts (the Triton interpreter also runs
    it on CPU tensors, for tests)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q must be [B, H, L_q, D] and k, v [B, H, L_k, D] alike, got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v must have contiguous channels")
    b, h, lq, head_dim = q.shape
    lk = k.shape[2]
    rows = _key_mask_rows(mask, b, lk)
    if mask is not None and rows is None:
        raise ValueError(f"mask must be a boolean key mask [B, 1, 1, L_k] or [B, L_k], got {mask.dtype} "
                         f"{list(mask.shape)}")
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two of at least 16, got {size}")
    if tiles_per_program < 1 or num_stages < 1:
        raise ValueError(f"tiles_per_program and num_stages must be positive, got {tiles_per_program}, "
                         f"{num_stages}")
    out = torch.empty((b, lq, h, head_dim), device=q.device, dtype=q.dtype).transpose(1, 2)
    if out.numel() == 0:
        return out
    if lk == 0:
        raise ValueError("attention needs at least one key")
    block_d = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - block_d
    block_d_rest = max(16, next_power_of_2(rest))
    if rows is not None and rows.stride(-1) != 1:
        rows = rows.contiguous()
    mask_rows = q if rows is None else rows.view(torch.uint8)  # an unused pointer without a mask
    mask_stride = 0 if rows is None or rows.shape[0] == 1 else rows.stride(0)
    one_key_block = lk <= block_n
    if one_key_block:  # the whole caption in one block, no wider than it needs
        block_n = max(16, next_power_of_2(lk))
    _kernel()[(cdiv(cdiv(lq, block_m), tiles_per_program), b * h)](
        q, k, v, out, mask_rows,
        h, lq, lk,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], mask_stride,
        1.0 / math.sqrt(head_dim),
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_D_REST=block_d_rest,
        HAS_REST=rest > 0, MASKED=rows is not None, ONE_KEY_BLOCK=one_key_block, NUM_STAGES=num_stages,
        DOT_FP32=q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps,
    )
    return out


def _kernel() -> Any:
    """The Triton kernel (its module, the only one importing Triton, is imported on first use)."""
    from videosys.kernels.text_attention_triton import text_attention_kernel

    return text_attention_kernel
