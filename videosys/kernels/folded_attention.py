"""The per-head softmax of a cross-attention folded into its projections, in one Triton pass.

:mod:`videosys.models.layers.folded_attention` turns a cross-attention to a short context into
``out = softmax_per_head(x @ A * scale + bias) @ B + out_bias`` with thin matrices ``A`` ``[C, H*L]`` and
``B`` ``[H*L, C_out]``. On the GPU the two products are cuBLAS GEMMs; between them the scores need a
softmax over each head's ``L`` columns, the scale and the bias row (the query bias's share and the key
mask). Torch's softmax over a last dimension of a few dozen, after a separate scale-and-bias pass, took
~0.08 ms of a ~0.6 ms folded module at Open-Sora's 480p shape on an H200, and the GEMM with the output bias
broadcast (``baddbmm``) copied the bias into its output first (docs/benchmarks.md, eleventh session).
:func:`head_softmax_rows` does the scale, bias and softmax in place in one pass, and also writes the column
after the scores as 1 and the rest of the row (padding to a GEMM-friendly width) as 0: with the output bias
as the matching row of ``B`` the second GEMM adds it for free. For float8 GEMMs (``--float8``) it writes
the probabilities as e4m3 into another tensor instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from videosys.kernels.common import (
    HALF_DTYPES,
    autograd_off,
    cdiv,
    next_power_of_2,
    triton_available,
)
from videosys.kernels.float8 import FLOAT8_DTYPE

__all__ = ["PROB_SCALE", "folded_attention_kernel_applies", "folded_row_width", "head_softmax_rows"]

#: Rows per program and warps of :func:`head_softmax_rows` for up to 16 keys a head, and for more (the
#: fastest launches at Open-Sora's 480p shape on an H200, 16 heads: 12 keys 0.021 ms, 1 row / 1 warp 0.035;
#: 33 keys 0.069 ms, 4 rows / 4 warps 0.124; ``scripts/bench_kernels.py --only cross``, eleventh session).
SHORT_LAUNCH, LONG_LAUNCH = (4, 4), (1, 1)
#: The scores' rows are padded to a multiple of this many columns (the GEMMs' tiles).
ROW_ALIGN = 64
#: The float8 probabilities are stored times this (a power of two: exact): 1 becomes 256 (e4m3 reaches 448)
#: and probabilities down to ~8e-6 stay above e4m3's smallest subnormal (2^-9), where unscaled those below
#: 0.002 would flush to zero.
PROB_SCALE = 256.0


def folded_row_width(heads: int, keys: int) -> int:
    """The width of a row of scores: ``heads * keys`` columns, the bias column, padding to
    :data:`ROW_ALIGN`."""
    return cdiv(heads * keys + 1, ROW_ALIGN) * ROW_ALIGN


def folded_attention_kernel_applies(x: torch.Tensor, heads: int, keys: int,
                                    params: Iterable[torch.Tensor] = ()) -> bool:
    """Whether the folded cross-attention of query tokens like ``x`` ``[G, N, C]`` for ``heads`` heads over
    ``keys`` context tokens runs on the GPU path (cuBLAS GEMMs around :func:`head_softmax_rows`): a CUDA
    tensor in fp16 / bf16, Triton installed, ``0 < heads * keys <= C`` (the folded GEMMs then do no more
    work than the projections they replace), and autograd recording nothing for ``x`` and ``params``
    (:func:`videosys.kernels.common.autograd_off`)."""
    return (
        x.is_cuda
        and triton_available()
        and x.dtype in HALF_DTYPES
        and 0 < heads * keys <= x.shape[-1]
        and autograd_off(x, params=params)
    )


def head_softmax_rows(scores: torch.Tensor, bias: torch.Tensor, heads: int, keys: int, scale: float, *,
                      out: torch.Tensor | None = None, rows_per_program: int | None = None,
                      num_warps: int | None = None) -> torch.Tensor:
    """Over contiguous ``scores`` ``[G, N, W]`` (``W`` at least ``heads * keys + 1``): columns
    ``h * keys + l`` become ``softmax_l(scores * scale + bias[g, h * keys + l])`` per head ``h``, column
    ``heads * keys`` becomes 1, the rest 0, in place. ``bias`` float32 ``[G, heads * keys]`` (``-inf`` on
    masked keys; every head needs a finite one). Returns ``scores``.

    ``out``: a contiguous e4m3 (``torch.float8_e4m3fn``) tensor of ``scores``' shape that receives the
    probabilities times :data:`PROB_SCALE` instead (the second GEMM's float8 input, whose row scale is then
    ``1 / PROB_SCALE``), its tail columns all 0; ``scores`` is left as it was. Returns ``out``.

    ``rows_per_program`` / ``num_warps``: launch tuning (defaults :data:`SHORT_LAUNCH` / :data:`LONG_LAUNCH`)."""
    if scores.ndim != 3 or not scores.is_contiguous() or scores.dtype not in HALF_DTYPES + (torch.float32,):
        raise ValueError(f"scores must be a contiguous [G, N, W] fp16 / bf16 / float32 tensor, got "
                         f"{scores.dtype} {list(scores.shape)}")
    g, n, width = scores.shape
    columns = heads * keys
    if keys < 1 or width <= columns:
        raise ValueError(f"scores rows of {width} columns cannot hold {heads} heads x {keys} keys and the bias "
                         f"column")
    if bias.dtype != torch.float32 or bias.shape != (g, columns):
        raise ValueError(f"bias must be float32 [{g}, {columns}], got {bias.dtype} {list(bias.shape)}")
    if out is not None and (out.dtype != FLOAT8_DTYPE or out.shape != scores.shape or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {FLOAT8_DTYPE} tensor of the scores' shape "
                         f"{list(scores.shape)}, got {out.dtype} {list(out.shape)}")
    target = scores if out is None else out
    rows = g * n
    if rows:
        default_rows, default_warps = SHORT_LAUNCH if keys <= 16 else LONG_LAUNCH
        block_r = rows_per_program or default_rows
        _kernel()[(cdiv(rows, block_r),)](
            scores, bias.contiguous(), target, rows, n, width, scale,
            HEADS=heads, KEYS=keys, BLOCK_R=block_r, BLOCK_H=next_power_of_2(heads),
            BLOCK_L=next_power_of_2(keys), BLOCK_TAIL=next_power_of_2(width - columns),
            FLOAT8=out is not None, PROB_SCALE=PROB_SCALE, INTERPRETED=not scores.is_cuda,
            num_warps=num_warps or default_warps,
        )
    return target


def _kernel() -> Any:
    """The Triton kernel (its module, the only one importing Triton, is imported on first use)."""
    from videosys.kernels.folded_attention_triton import head_softmax_kernel

    return head_softmax_kernel
