"""The Triton kernel of :func:`videosys.kernels.folded_attention.head_softmax_rows` (this module imports
Triton; :mod:`videosys.kernels.folded_attention` imports it on first use only)."""

import triton
import triton.language as tl

from videosys.kernels.float8_triton import store_e4m3

__all__ = ["head_softmax_kernel"]


@triton.jit
def head_softmax_kernel(
    scores_ptr, bias_ptr, out_ptr,
    ROWS, N, WIDTH,
    scale,
    HEADS: tl.constexpr, KEYS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_TAIL: tl.constexpr, FLOAT8: tl.constexpr, PROB_SCALE: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Over rows ``r`` of ``scores`` ``[ROWS, WIDTH]`` (row ``r`` of group ``r // N``): columns
    ``h * KEYS + l`` of ``out`` (``scores`` itself, or another tensor of its shape) become
    ``softmax_l(scores * scale + bias[group, h * KEYS + l])`` per head ``h`` (float32, rounded once).

    Half-precision ``out``: column ``HEADS * KEYS`` becomes 1 (the output bias's row of the second GEMM) and
    the columns after it 0. ``FLOAT8`` ``out`` (e4m3): the probabilities times ``PROB_SCALE``, and the whole
    tail 0 (the second GEMM adds the output bias itself).

    ``bias`` float32 ``[G, HEADS * KEYS]`` (``-inf`` on masked keys; every head has a finite one)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < ROWS
    rows64 = rows.to(tl.int64)
    group = rows64 // N
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_L)
    column = h[:, None] * KEYS + j[None, :]  # [BLOCK_H, BLOCK_L]
    ok = row_ok[:, None, None] & ((h < HEADS)[:, None] & (j < KEYS)[None, :])[None, :, :]
    offsets = rows64[:, None, None] * WIDTH + column[None, :, :]
    s = tl.load(scores_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + group[:, None, None] * (HEADS * KEYS) + column[None, :, :], mask=ok, other=0.0)
    s = tl.where(ok, s * scale + b, float("-inf"))
    peak = tl.max(s, axis=2)
    peak = tl.where(peak == float("-inf"), 0.0, peak)  # padding heads: all -inf, their rows are not stored
    e = tl.exp(s - peak[:, :, None])
    p = e / tl.maximum(tl.sum(e, axis=2), 1e-30)[:, :, None]
    # the tail: the bias column, then zeros up to WIDTH
    t = HEADS * KEYS + tl.arange(0, BLOCK_TAIL)
    tail_ok = row_ok[:, None] & (t < WIDTH)[None, :]
    tail_offsets = rows64[:, None] * WIDTH + t[None, :]
    if FLOAT8:
        store_e4m3(p * PROB_SCALE, ok, offsets, out_ptr, INTERPRETED)
        tl.store(out_ptr + tail_offsets, tl.zeros([BLOCK_R, BLOCK_TAIL], tl.float32).to(out_ptr.dtype.element_ty),
                 mask=tail_ok)
    else:
        tl.store(out_ptr + offsets, p.to(out_ptr.dtype.element_ty), mask=ok)
        tail = tl.where(t == HEADS * KEYS, 1.0, 0.0)
        tl.store(out_ptr + tail_offsets,
                 (tail[None, :] + tl.zeros([BLOCK_R, BLOCK_TAIL], tl.float32)).to(out_ptr.dtype.element_ty),
                 mask=tail_ok)
