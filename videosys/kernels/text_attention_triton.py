"""The Triton kernel of :func:`videosys.kernels.text_attention.text_attention` (this module imports Triton;
:mod:`videosys.kernels.text_attention` imports it on first use only).

A head's channels are held as two tiles, the largest power of two ``BLOCK_D`` not above ``head_dim`` and,
with ``HAS_REST``, ``BLOCK_D_REST`` (a power of two, at least 16: ``tl.dot``'s smallest) for the rest, so
that Open-Sora's 72-channel heads multiply as 64 + 16 channels instead of one 128-channel tile.
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
def _load_keys(base, n, stride_n, d, d_valid, d2, d2_valid, n_valid, HAS_REST: tl.constexpr):
    """Keys (or values) ``n`` of one head as their two channel tiles (without ``HAS_REST`` the second is
    the first, unused)."""
    x = tl.load(base + n[:, None] * stride_n + d[None, :], mask=n_valid[:, None] & d_valid, other=0.0)
    x2 = x
    if HAS_REST:
        x2 = tl.load(base + n[:, None] * stride_n + d2[None, :], mask=n_valid[:, None] & d2_valid, other=0.0)
    return x, x2


@triton.jit
def text_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, mask_ptr,
    H, LQ, LK,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l, mask_stride,
    sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_D_REST: tl.constexpr, HAS_REST: tl.constexpr, MASKED: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Program ``(i, bh)`` of a ``(P, B * H)`` grid: the query tiles ``i, i + P, ...`` (``BLOCK_M`` queries
    each) of sample ``bh // H``, head ``bh % H``. With ``ONE_KEY_BLOCK`` (``LK <= BLOCK_N``) the program
    loads the head's keys and values once and walks its query tiles in a software-pipelined loop
    (``NUM_STAGES``: the next tiles' loads in flight during this one's work); the softmax is exact in
    float32 and its weights are rounded to the input dtype before the product with v (as
    :func:`text_attention_reference`). Otherwise each tile walks the keys in blocks of ``BLOCK_N`` with an
    online softmax (its unnormalised weights rounded, as flash attention does). With ``MASKED`` a key ``j``
    of sample ``b`` counts where ``mask_ptr[b * mask_stride + j]`` is non-zero; a query whose keys are all
    masked gets zeros."""
    dtype = q_ptr.dtype.element_ty
    first_tile = tl.program_id(0)
    tile_step = tl.num_programs(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    d_valid = (d < HEAD_DIM)[None, :]
    d2 = BLOCK_D + tl.arange(0, BLOCK_D_REST)
    d2_valid = (d2 < HEAD_DIM)[None, :]
    q_base = q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    k_base = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    out_base = out_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
    if ONE_KEY_BLOCK:
        n = tl.arange(0, BLOCK_N)
        keep = n < LK
        if MASKED:
            keep = keep & (tl.load(mask_ptr + b.to(tl.int64) * mask_stride + n, mask=n < LK, other=0) != 0)
        k, k2 = _load_keys(k_base, n, sk_l, d, d_valid, d2, d2_valid, n < LK, HAS_REST)
        v, v2 = _load_keys(v_base, n, sv_l, d, d_valid, d2, d2_valid, n < LK, HAS_REST)
        k = tl.trans(k)
        if HAS_REST:
            k2 = tl.trans(k2)
        for m0 in tl.range(first_tile * BLOCK_M, LQ, tile_step, num_stages=NUM_STAGES):
            m = m0 + rows
            m_valid = (m < LQ)[:, None]
            q_rows = q_base + m[:, None].to(tl.int64) * sq_l
            out_rows = out_base + m[:, None].to(tl.int64) * so_l
            scores = _dot(tl.load(q_rows + d[None, :], mask=m_valid & d_valid, other=0.0), k, DOT_FP32)
            if HAS_REST:
                scores += _dot(tl.load(q_rows + d2[None, :], mask=m_valid & d2_valid, other=0.0), k2, DOT_FP32)
            scores = tl.where(keep[None, :], scores * sm_scale, float("-inf"))
            row_max = tl.maximum(tl.max(scores, axis=1), -1.0e30)  # finite where every key is masked
            weights = tl.exp(scores - row_max[:, None])
            total = tl.sum(weights, axis=1)
            weights = (weights * tl.where(total > 0.0, 1.0 / total, 0.0)[:, None]).to(v.dtype)
            tl.store(out_rows + d[None, :], _dot(weights, v, DOT_FP32).to(dtype), mask=m_valid & d_valid)
            if HAS_REST:
                tl.store(out_rows + d2[None, :], _dot(weights, v2, DOT_FP32).to(dtype), mask=m_valid & d2_valid)
    else:
        for m0 in range(first_tile * BLOCK_M, LQ, tile_step):
            m = m0 + rows
            m_valid = (m < LQ)[:, None]
            q_rows = q_base + m[:, None].to(tl.int64) * sq_l
            q = tl.load(q_rows + d[None, :], mask=m_valid & d_valid, other=0.0)
            q2 = q
            if HAS_REST:
                q2 = tl.load(q_rows + d2[None, :], mask=m_valid & d2_valid, other=0.0)
            row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked block leaves it
            row_sum = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_D_REST], tl.float32)
            for start in range(0, LK, BLOCK_N):
                n = start + tl.arange(0, BLOCK_N)
                keep = n < LK
                if MASKED:
                    keep = keep & (tl.load(mask_ptr + b.to(tl.int64) * mask_stride + n, mask=n < LK, other=0) != 0)
                k, k2 = _load_keys(k_base, n, sk_l, d, d_valid, d2, d2_valid, n < LK, HAS_REST)
                v, v2 = _load_keys(v_base, n, sv_l, d, d_valid, d2, d2_valid, n < LK, HAS_REST)
                scores = _dot(q, tl.trans(k), DOT_FP32)
                if HAS_REST:
                    scores += _dot(q2, tl.trans(k2), DOT_FP32)
                scores = tl.where(keep[None, :], scores * sm_scale, float("-inf"))
                new_max = tl.maximum(row_max, tl.max(scores, axis=1))
                correction = tl.exp(row_max - new_max)
                weights = tl.exp(scores - new_max[:, None])
                row_sum = row_sum * correction + tl.sum(weights, axis=1)
                row_max = new_max
                weights = weights.to(v.dtype)
                acc = acc * correction[:, None] + _dot(weights, v, DOT_FP32)
                if HAS_REST:
                    acc2 = acc2 * correction[:, None] + _dot(weights, v2, DOT_FP32)
            inverse = tl.where(row_sum > 0.0, 1.0 / row_sum, 0.0)[:, None]
            out_rows = out_base + m[:, None].to(tl.int64) * so_l
            tl.store(out_rows + d[None, :], (acc * inverse).to(dtype), mask=m_valid & d_valid)
            if HAS_REST:
                tl.store(out_rows + d2[None, :], (acc2 * inverse).to(dtype), mask=m_valid & d2_valid)
