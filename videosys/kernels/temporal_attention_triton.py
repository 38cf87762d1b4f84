"""The Triton kernel of :func:`videosys.kernels.temporal_attention.fused_temporal_attention` (this module
imports Triton; :mod:`videosys.kernels.temporal_attention` imports it on first use only).

q and k are held as their even and odd channels (``x[2j]``, ``x[2j+1]``: two ``[BLOCK_T, BLOCK_P]`` tiles,
split in registers from one contiguous load), so RoPE's pair rotation is plain arithmetic between the two
tiles and ``q . k`` is the sum of two products.
"""

import triton
import triton.language as tl

__all__ = ["temporal_attention_kernel"]


@triton.jit
def _round(x, dtype: tl.constexpr):
    """``x`` rounded to ``dtype`` and widened back to float32 (the torch path's rounding points)."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _load_qk(ptr, t_offs, d, mask, w_ptr, cos0, sin0, eps,
             HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
             NORM: tl.constexpr, ROPE: tl.constexpr, dtype: tl.constexpr):
    """One head's q or k as its even / odd channel tiles ``[BLOCK_T, BLOCK_P]``, float32: RMS-normalised
    (rounded), rotated (rounded). Loaded as one contiguous ``[BLOCK_T, 2 * BLOCK_P]`` tile (vector loads),
    split in registers."""
    x = tl.load(ptr + t_offs + d[None, :], mask=mask, other=0.0).to(tl.float32)
    x0, x1 = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_P, 2]))
    if NORM:
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)[:, None]
        w = tl.load(w_ptr + d, mask=d < HEAD_DIM, other=0.0).to(tl.float32)
        w0, w1 = tl.split(tl.reshape(w, [BLOCK_P, 2]))
        x0 = _round(x0 * rstd * w0[None, :], dtype)
        x1 = _round(x1 * rstd * w1[None, :], dtype)
    if ROPE:
        r0 = _round(x0 * cos0 - x1 * sin0, dtype)
        x1 = _round(x1 * cos0 + x0 * sin0, dtype)
        x0 = r0
    return x0, x1


@triton.jit
def temporal_attention_kernel(
    qkv_ptr, out_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr,
    S, H, T,
    stride_b, stride_t, stride_s,
    out_stride_b, out_stride_t, out_stride_s,
    eps, sm_scale,
    HEAD_DIM: tl.constexpr, Q_NORM: tl.constexpr, K_NORM: tl.constexpr, ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
    HEADS_PER_PROGRAM: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Program ``pid`` takes ``HEADS_PER_PROGRAM`` consecutive heads of one (sample, position).

    ``cos_ptr`` / ``sin_ptr``: ``[T, HEAD_DIM // 2]`` tables, one angle per channel pair. ``HEAD_DIM`` is a
    compile-time constant so that Triton knows each head's rows start 16-byte aligned (vector loads).
    """
    BLOCK_D: tl.constexpr = 2 * BLOCK_P
    groups = H // HEADS_PER_PROGRAM
    pid = tl.program_id(0)
    first_head = (pid % groups) * HEADS_PER_PROGRAM
    position = (pid // groups) % S
    sample = pid // (groups * S)
    t = tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_P)  # channel pairs
    d = tl.arange(0, BLOCK_D)  # channels
    t_valid = (t < T)[:, None]
    mask = t_valid & (d < HEAD_DIM)[None, :]
    c = H * HEAD_DIM
    row = qkv_ptr + sample.to(tl.int64) * stride_b + position.to(tl.int64) * stride_s
    out_row = out_ptr + sample.to(tl.int64) * out_stride_b + position.to(tl.int64) * out_stride_s
    t_offs = t[:, None].to(tl.int64) * stride_t
    out_t_offs = t[:, None].to(tl.int64) * out_stride_t
    dtype = qkv_ptr.dtype.element_ty
    if ROPE:
        table = t[:, None] * (HEAD_DIM // 2) + j[None, :]
        pair_mask = t_valid & (j < HEAD_DIM // 2)[None, :]
        cos0 = tl.load(cos_ptr + table, mask=pair_mask, other=0.0)
        sin0 = tl.load(sin_ptr + table, mask=pair_mask, other=0.0)
    else:
        cos0 = 0.0
        sin0 = 0.0
    for i in tl.static_range(HEADS_PER_PROGRAM):
        base = row + (first_head + i) * HEAD_DIM
        q0, q1 = _load_qk(base, t_offs, d, mask, qw_ptr, cos0, sin0, eps, HEAD_DIM, BLOCK_T, BLOCK_P, Q_NORM, ROPE,
                          dtype)
        k0, k1 = _load_qk(base + c, t_offs, d, mask, kw_ptr, cos0, sin0, eps, HEAD_DIM, BLOCK_T, BLOCK_P, K_NORM,
                          ROPE, dtype)
        v = tl.load(base + 2 * c + t_offs + d[None, :], mask=mask, other=0.0)
        if DOT_FP32:  # exact products of the rounded values either way; float32 for the CPU interpreter
            scores = tl.dot(q0, tl.trans(k0), input_precision="ieee") + tl.dot(q1, tl.trans(k1),
                                                                             input_precision="ieee")
        else:  # the rounded q / k are exact in dtype: tensor-core products, float32 sums
            scores = tl.dot(q0.to(dtype), tl.trans(k0.to(dtype))) + tl.dot(q1.to(dtype), tl.trans(k1.to(dtype)))
        scores = tl.where((t < T)[None, :], scores * sm_scale, float("-inf"))
        scores = scores - tl.max(scores, axis=1)[:, None]
        weights = tl.exp(scores)
        weights = weights / tl.sum(weights, axis=1)[:, None]
        if DOT_FP32:
            out = tl.dot(weights, v.to(tl.float32), input_precision="ieee")
        else:  # weights rounded to dtype, as the torch path rounds them
            out = tl.dot(weights.to(dtype), v)
        tl.store(out_row + (first_head + i) * HEAD_DIM + out_t_offs + d[None, :], out.to(dtype), mask=mask)
