"""The Triton code of :mod:`videosys.kernels.float8` (this module imports Triton; the kernels' modules
import it on first use only): rows quantized to e4m3 with one float32 scale per row, optionally after a
tanh GELU, and the store that the layer-norm + modulation kernel shares."""

import triton
import triton.language as tl

__all__ = ["quantize_rows_kernel", "store_float8_rows"]

#: The largest finite float8 e4m3 (``torch.float8_e4m3fn``) value.
FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _round_to_3_mantissa_bits(v):
    """``v`` (float32) rounded to nearest-even at e4m3's 3 mantissa bits, in float32: the e4m3 cast of the
    result is then exact for e4m3's normal range. The GPU's cast rounds the same way by itself; Triton's
    CPU interpreter drops the carry into the exponent (127 -> 64), so the tests need this."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def store_float8_rows(v, mask, r, rows, offs, q_ptr, scale_ptr, min_amax):
    """Store the float32 tile ``v`` (whole rows ``r``) as e4m3 at ``q_ptr + offs`` and each row's scale
    ``max(|row|, min_amax) / 448`` at ``scale_ptr + r``: ``q * scale`` is the row. The values are multiplied
    by ``448 / max(|row|, min_amax)`` (one IEEE division per row, none per value)."""
    amax = tl.maximum(tl.max(tl.where(mask, tl.abs(v), 0.0), axis=1), min_amax)
    s = amax / FP8_MAX
    inv = FP8_MAX / amax
    q = tl.minimum(tl.maximum(_round_to_3_mantissa_bits(v * inv[:, None]), -FP8_MAX), FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + r, s, mask=r < rows)


@triton.jit
def _gelu_tanh(x):
    """``F.gelu(x, approximate="tanh")`` in float32, as ``x * sigmoid(2u)`` (= ``0.5 x (1 + tanh(u))``) with
    a fast reciprocal: the result is rounded to the model dtype next, far coarser than its error."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * tl.fdiv(1.0, 1.0 + tl.exp(-2.0 * u), ieee_rounding=False)


@triton.jit
def quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, rows, K, min_amax,
    GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``BLOCK_M`` whole rows per program (``BLOCK_K >= K``); with ``GELU`` the rows go through a tanh GELU
    first, rounded to ``x``'s dtype as the torch op returns it."""
    dtype = x_ptr.dtype.element_ty
    r = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    c = tl.arange(0, BLOCK_K)
    mask = (r < rows)[:, None] & (c < K)[None, :]
    offs = r[:, None] * K + c[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        v = _gelu_tanh(v).to(dtype).to(tl.float32)
    store_float8_rows(v, mask, r, rows, offs, q_ptr, scale_ptr, min_amax)
