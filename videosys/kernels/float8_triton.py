"""The Triton code of :mod:`videosys.kernels.float8` (this module imports Triton; the kernels' modules
import it on first use only): rows quantized to e4m3 with one float32 scale per row, optionally after a
tanh GELU, and the pieces the layer-norm + modulation kernel shares (a row's absolute maximum, the
quantized store)."""

import triton
import triton.language as tl

__all__ = ["FP8_MAX", "quantize_rows_kernel", "row_amax", "store_e4m3", "store_quantized"]

#: The largest finite float8 e4m3 (``torch.float8_e4m3fn``) value.
FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _round_to_3_mantissa_bits(v):
    """``v`` (float32) rounded to nearest-even at e4m3's 3 mantissa bits, in float32: the e4m3 cast of the
    result is then exact for e4m3's normal range. The GPU's cast rounds the same way by itself; Triton's
    CPU interpreter drops the carry into the exponent (127 -> 64), so the tests need this (and only they:
    the kernels ask for it with ``INTERPRETED``, set for CPU tensors, which only the interpreter runs)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def store_e4m3(q, mask, offs, q_ptr, INTERPRETED: tl.constexpr):
    """``q`` (float32, any shape) clamped to e4m3's range, rounded to e4m3 and stored (``INTERPRETED``:
    running in Triton's CPU interpreter, which needs the rounding done in integer arithmetic first)."""
    if INTERPRETED:
        q = _round_to_3_mantissa_bits(q)
    q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_quantized(v, mask, offs, q_ptr, inv, INTERPRETED: tl.constexpr):
    """``v * inv`` per row, rounded to e4m3 and stored (``inv``: each row's ``448 / amax``)."""
    store_e4m3(v * inv[:, None], mask, offs, q_ptr, INTERPRETED)


@triton.jit
def row_amax(v, mask):
    return tl.max(tl.where(mask, tl.abs(v), 0.0), axis=1)


@triton.jit
def _gelu_tanh(x, INTERPRETED: tl.constexpr):
    """``F.gelu(x, approximate="tanh")`` in float32; the result is rounded to the model dtype next, far
    coarser than either form's error. On the GPU as ``0.5 x (1 + tanh(u))`` with the hardware's
    approximate tanh, one special-function instruction per value: with ``exp`` and a reciprocal (two) the
    GELU + quantize kernel waited on that unit (at the MLP's width 110 us of its 280 on an H200, where
    quantizing alone took 170; docs/benchmarks.md, ninth session). The CPU interpreter runs no PTX: there
    it is ``x * sigmoid(2u)``, the same function."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    if INTERPRETED:
        return x * tl.fdiv(1.0, 1.0 + tl.exp(-2.0 * u), ieee_rounding=False)
    t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
    half_x = 0.5 * x
    return half_x + half_x * t


@triton.jit
def _load_rows(x_ptr, r, c, rmask, K, GELU: tl.constexpr, INTERPRETED: tl.constexpr):
    """The tile of rows ``r`` (from ``x_ptr``) and columns ``c`` in float32 (through the GELU, rounded to
    ``x``'s dtype)."""
    mask = rmask[:, None] & (c < K)[None, :]
    offs = r[:, None] * K + c[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        v = _gelu_tanh(v, INTERPRETED).to(x_ptr.dtype.element_ty).to(tl.float32)
    return v, mask, offs


@triton.jit
def quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, rows, K, min_amax,
    GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_K_REST: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """``BLOCK_M`` whole rows per program as two tiles, ``BLOCK_K`` columns and the ``BLOCK_K_REST`` after
    them (``0``: none), so that rows whose width is not a power of two waste few lanes (4608 = 4096 + 512);
    with ``GELU`` the rows go through a tanh GELU first, rounded to ``x``'s dtype as the torch op returns it."""
    row0 = tl.program_id(0) * BLOCK_M
    base = row0.to(tl.int64) * K  # the program's first element; offsets within its rows fit int32
    rr = tl.arange(0, BLOCK_M)
    rmask = row0 + rr < rows
    x_rows, q_rows = x_ptr + base, q_ptr + base
    v, mask, offs = _load_rows(x_rows, rr, tl.arange(0, BLOCK_K), rmask, K, GELU, INTERPRETED)
    amax = row_amax(v, mask)
    if BLOCK_K_REST > 0:
        v2, mask2, offs2 = _load_rows(x_rows, rr, BLOCK_K + tl.arange(0, BLOCK_K_REST), rmask, K, GELU, INTERPRETED)
        amax = tl.maximum(amax, row_amax(v2, mask2))
    amax = tl.maximum(amax, min_amax)
    tl.store(scale_ptr + row0 + rr, amax / FP8_MAX, mask=rmask)
    inv = FP8_MAX / amax
    store_quantized(v, mask, offs, q_rows, inv, INTERPRETED)
    if BLOCK_K_REST > 0:
        store_quantized(v2, mask2, offs2, q_rows, inv, INTERPRETED)
