"""The Triton kernel of :func:`videosys.kernels.text_attention.text_attention` (this module imports Triton;
:mod:`videosys.kernels.text_attention` imports it on first use only).

A head's channels are held as two tiles, the largest power of two ``BLOCK_D`` not above ``head_dim`` and
``BLOCK_D_REST`` (a power of two, at least 16: ``tl.dot``'s smallest) for the rest, so that Open-Sora's
72-channel heads multiply as 64 + 16 channels instead of one 128-channel tile.
"""

import triton
import triton.language as tl

__all__ = ["text_attention_kernel"]


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    if DOT_FP32:  # the CPU interpreter and float32 inputs: exact products of the (rounded) operands
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def text_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, mask_ptr,
    H, LQ, LK,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l, mask_stride,
    sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_D_REST: tl.constexpr, MASKED: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Program ``(i, bh)``: queries ``i * BLOCK_M ...`` of sample ``bh // H``, head ``bh % H``, against all
    ``LK`` keys in blocks of ``BLOCK_N`` (online softmax in float32, the weights rounded to the input dtype
    before the product with v, as flash attention rounds them). With ``MASKED`` a key ``j`` of sample ``b``
    counts where ``mask_ptr[b * mask_stride + j]`` is non-zero; a query whose keys are all masked gets
    zeros."""
    dtype = q_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = (m < LQ)[:, None]
    d = tl.arange(0, BLOCK_D)
    d_valid = (d < HEAD_DIM)[None, :]
    q_base = q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    k_base = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    q_rows = q_base + m[:, None].to(tl.int64) * sq_l
    q = tl.load(q_rows + d[None, :], mask=m_valid & d_valid, other=0.0)
    if BLOCK_D_REST > 0:
        d2 = BLOCK_D + tl.arange(0, BLOCK_D_REST)
        d2_valid = (d2 < HEAD_DIM)[None, :]
        q2 = tl.load(q_rows + d2[None, :], mask=m_valid & d2_valid, other=0.0)
    row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked block leaves it, exp(0) = 1
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if BLOCK_D_REST > 0:
        acc2 = tl.zeros([BLOCK_M, BLOCK_D_REST], tl.float32)
    for start in range(0, LK, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_valid = n < LK
        k = tl.load(k_base + n[:, None] * sk_l + d[None, :], mask=n_valid[:, None] & d_valid, other=0.0)
        v = tl.load(v_base + n[:, None] * sv_l + d[None, :], mask=n_valid[:, None] & d_valid, other=0.0)
        scores = _dot(q, tl.trans(k), DOT_FP32)
        if BLOCK_D_REST > 0:
            k2 = tl.load(k_base + n[:, None] * sk_l + d2[None, :], mask=n_valid[:, None] & d2_valid, other=0.0)
            scores += _dot(q2, tl.trans(k2), DOT_FP32)
        keep = n_valid
        if MASKED:
            keep = keep & (tl.load(mask_ptr + b.to(tl.int64) * mask_stride + n, mask=n_valid, other=0) != 0)
        scores = tl.where(keep[None, :], scores * sm_scale, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        correction = tl.exp(row_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        row_sum = row_sum * correction + tl.sum(weights, axis=1)
        row_max = new_max
        weights = weights.to(v.dtype)
        acc = acc * correction[:, None] + _dot(weights, v, DOT_FP32)
        if BLOCK_D_REST > 0:
            v2 = tl.load(v_base + n[:, None] * sv_l + d2[None, :], mask=n_valid[:, None] & d2_valid, other=0.0)
            acc2 = acc2 * correction[:, None] + _dot(weights, v2, DOT_FP32)
    inverse = tl.where(row_sum > 0.0, 1.0 / row_sum, 0.0)[:, None]
    out_rows = out_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + m[:, None].to(tl.int64) * so_l
    tl.store(out_rows + d[None, :], (acc * inverse).to(dtype), mask=m_valid & d_valid)
    if BLOCK_D_REST > 0:
        tl.store(out_rows + d2[None, :], (acc2 * inverse).to(dtype), mask=m_valid & d2_valid)
