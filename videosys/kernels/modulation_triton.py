"""The Triton kernels of :mod:`videosys.kernels.modulation` (this module imports Triton;
:mod:`videosys.kernels.modulation` imports it on first use only).

Both kernels walk ``[rows, C]`` row-major tensors whose rows fall into equal consecutive groups, each group
with its own modulation row (``row // rows_per_group``), read with each modulation tensor's stride between
groups. Values are
rounded to the output dtype where the torch path rounds them, so the results equal the torch path's.
"""

import triton
import triton.language as tl

from videosys.kernels.float8_triton import FP8_MAX, row_amax, store_quantized

__all__ = ["gate_float8_kernel", "gate_kernel", "layer_norm_modulate_kernel"]


@triton.jit
def _round(x, dtype: tl.constexpr):
    """``x`` rounded to ``dtype`` and widened back to float32."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _modulated(xc, rstd, group, c, C, mask, w_ptr, b_ptr, shift_ptr, scale_ptr, shift_stride, scale_stride,
               AFFINE: tl.constexpr, dtype: tl.constexpr):
    """One tile of centred rows ``xc`` normalised (rounded, as ``nn.LayerNorm`` returns it) and modulated:
    ``h * (1 + scale) + shift`` with ``1 + scale`` rounded (as the torch path forms it), in float32."""
    h = xc * rstd[:, None]
    if AFFINE:
        w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        h = h * w[None, :] + b[None, :]
    h = _round(h, dtype)
    shift = tl.load(shift_ptr + group * shift_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + group * scale_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
    return h * _round(1.0 + scale, dtype) + shift


@triton.jit
def _load_row_tile(x_ptr, addend_ptr, total_ptr, base, offs, mask, ADD: tl.constexpr, dtype: tl.constexpr):
    """A tile of ``x`` in float32; with ``ADD`` of ``x + addend`` rounded to ``dtype``, also stored at
    ``total_ptr``."""
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        x = x + tl.load(addend_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(total_ptr + base + offs, x.to(dtype), mask=mask)
        x = _round(x, dtype)
    return x


@triton.jit
def layer_norm_modulate_kernel(
    x_ptr, addend_ptr, total_ptr, out_ptr, shift_ptr, scale_ptr, w_ptr, b_ptr, row_scale_ptr,
    rows, C, rows_per_group, shift_stride, scale_stride, eps, min_amax,
    ADD: tl.constexpr, AFFINE: tl.constexpr, FLOAT8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_C_REST: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """``BLOCK_M`` whole rows per program, each held as two tiles of ``BLOCK_C`` columns and the
    ``BLOCK_C_REST`` after them (``0``: none), so that widths that are not a power of two waste few lanes
    (1152 = 1024 + 128): the layer norm in float32, rounded (as ``nn.LayerNorm`` returns it), then
    ``h * (1 + scale) + shift`` with ``1 + scale`` rounded (as the torch path forms it) and one rounding at
    the end (as ``torch.addcmul``). With ``ADD`` the rows normalised are ``x + addend`` (rounded, as torch's
    add), also written to ``total_ptr``. With ``FLOAT8`` the rounded rows are stored as e4m3 with one scale
    per row at ``row_scale_ptr``."""
    dtype = x_ptr.dtype.element_ty
    row0 = tl.program_id(0) * BLOCK_M
    base = row0.to(tl.int64) * C  # the program's first element; offsets within its rows fit int32
    rr = tl.arange(0, BLOCK_M)
    r = row0 + rr
    rmask = (r < rows)[:, None]
    group = (r // rows_per_group)[:, None]
    c = tl.arange(0, BLOCK_C)
    mask = rmask & (c < C)[None, :]
    offs = rr[:, None] * C + c[None, :]
    x = _load_row_tile(x_ptr, addend_ptr, total_ptr, base, offs, mask, ADD, dtype)
    row_sum = tl.sum(x, axis=1)
    if BLOCK_C_REST > 0:
        c2 = BLOCK_C + tl.arange(0, BLOCK_C_REST)
        mask2 = rmask & (c2 < C)[None, :]
        offs2 = rr[:, None] * C + c2[None, :]
        x2 = _load_row_tile(x_ptr, addend_ptr, total_ptr, base, offs2, mask2, ADD, dtype)
        row_sum += tl.sum(x2, axis=1)
    mean = row_sum / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    squares = tl.sum(xc * xc, axis=1)
    if BLOCK_C_REST > 0:
        xc2 = tl.where(mask2, x2 - mean[:, None], 0.0)
        squares += tl.sum(xc2 * xc2, axis=1)
    rstd = tl.rsqrt(squares / C + eps)
    out = _modulated(xc, rstd, group, c, C, mask, w_ptr, b_ptr, shift_ptr, scale_ptr, shift_stride, scale_stride,
                     AFFINE, dtype)
    if BLOCK_C_REST > 0:
        out2 = _modulated(xc2, rstd, group, c2, C, mask2, w_ptr, b_ptr, shift_ptr, scale_ptr, shift_stride,
                          scale_stride, AFFINE, dtype)
    if FLOAT8:  # the rounded rows as e4m3, each with its scale (amax / 448)
        out = _round(out, dtype)
        amax = row_amax(out, mask)
        if BLOCK_C_REST > 0:
            out2 = _round(out2, dtype)
            amax = tl.maximum(amax, row_amax(out2, mask2))
        amax = tl.maximum(amax, min_amax)
        tl.store(row_scale_ptr + r, amax / FP8_MAX, mask=r < rows)
        inv = FP8_MAX / amax
        store_quantized(out, mask, offs, out_ptr + base, inv, INTERPRETED)
        if BLOCK_C_REST > 0:
            store_quantized(out2, mask2, offs2, out_ptr + base, inv, INTERPRETED)
    else:
        tl.store(out_ptr + base + offs, out.to(dtype), mask=mask)
        if BLOCK_C_REST > 0:
            tl.store(out_ptr + base + offs2, out2.to(dtype), mask=mask2)


@triton.jit
def gate_kernel(
    y_ptr, gate_ptr, res_ptr, out_ptr, prod_ptr,
    rows, C, rows_per_group, gate_stride,
    RESIDUAL: tl.constexpr, PRODUCT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y * gate`` (rounded, as the torch path's product), plus ``residual`` (rounded again) with
    ``RESIDUAL``, over a ``BLOCK_M x BLOCK_C`` tile per program; with ``PRODUCT`` (and ``RESIDUAL``) the
    rounded product is also written to ``prod_ptr``."""
    dtype = out_ptr.dtype.element_ty
    row0 = tl.program_id(0) * BLOCK_M
    base = row0.to(tl.int64) * C  # the tile's first row; offsets within its rows fit int32
    rr = tl.arange(0, BLOCK_M)
    r = row0 + rr
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < rows)[:, None] & (c < C)[None, :]
    offs = rr[:, None] * C + c[None, :]
    y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + (r // rows_per_group)[:, None] * gate_stride + c[None, :], mask=mask,
                   other=0.0).to(tl.float32)
    out = y * gate
    if RESIDUAL:
        product = out.to(dtype)
        if PRODUCT:
            tl.store(prod_ptr + base + offs, product, mask=mask)
        out = product.to(tl.float32) + tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + offs, out.to(dtype), mask=mask)


@triton.jit
def _gate_row_tile(y_ptr, gate_ptr, res_ptr, out_ptr, prod_ptr, base, c, C, group, gate_stride,
                   PRODUCT: tl.constexpr):
    """One ``[1, BLOCK]`` tile of a row (columns ``c``, ``[1, BLOCK]``): ``residual + y * gate`` as
    :func:`gate_kernel` rounds it, stored (and the product with ``PRODUCT``); returned in float32 with its
    mask."""
    dtype = out_ptr.dtype.element_ty
    mask = c < C
    y = tl.load(y_ptr + base + c, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + group * gate_stride + c, mask=mask, other=0.0).to(tl.float32)
    product = (y * gate).to(dtype)
    if PRODUCT:
        tl.store(prod_ptr + base + c, product, mask=mask)
    out = (product.to(tl.float32) + tl.load(res_ptr + base + c, mask=mask, other=0.0).to(tl.float32)).to(dtype)
    tl.store(out_ptr + base + c, out, mask=mask)
    return out.to(tl.float32), mask


@triton.jit
def gate_float8_kernel(
    y_ptr, gate_ptr, res_ptr, out_ptr, prod_ptr, q_ptr, row_scale_ptr,
    C, rows_per_group, gate_stride, min_amax,
    PRODUCT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_C_REST: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """:func:`gate_kernel` with ``RESIDUAL`` over one whole row per program (two tiles, ``BLOCK_C`` columns
    and the ``BLOCK_C_REST`` after them), which also writes the row it makes as e4m3 with its scale (the
    next linear's float8 input)."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * C
    group = row // rows_per_group
    c = tl.arange(0, BLOCK_C)[None, :]
    out, mask = _gate_row_tile(y_ptr, gate_ptr, res_ptr, out_ptr, prod_ptr, base, c, C, group, gate_stride,
                               PRODUCT)
    amax = row_amax(out, mask)
    if BLOCK_C_REST > 0:
        c2 = BLOCK_C + tl.arange(0, BLOCK_C_REST)[None, :]
        out2, mask2 = _gate_row_tile(y_ptr, gate_ptr, res_ptr, out_ptr, prod_ptr, base, c2, C, group, gate_stride,
                                     PRODUCT)
        amax = tl.maximum(amax, row_amax(out2, mask2))
    amax = tl.maximum(amax, min_amax)
    tl.store(row_scale_ptr + row + tl.arange(0, 1), amax / FP8_MAX)
    inv = FP8_MAX / amax
    store_quantized(out, mask, c, q_ptr + base, inv, INTERPRETED)
    if BLOCK_C_REST > 0:
        store_quantized(out2, mask2, c2, q_ptr + base, inv, INTERPRETED)
