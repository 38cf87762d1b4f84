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

__all__ = ["gate_kernel", "layer_norm_modulate_kernel"]


@triton.jit
def _round(x, dtype: tl.constexpr):
    """``x`` rounded to ``dtype`` and widened back to float32."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def layer_norm_modulate_kernel(
    x_ptr, out_ptr, shift_ptr, scale_ptr, w_ptr, b_ptr, row_scale_ptr,
    rows, C, rows_per_group, shift_stride, scale_stride, eps, min_amax,
    AFFINE: tl.constexpr, FLOAT8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``BLOCK_M`` whole rows per program (``BLOCK_C >= C``): the layer norm in float32, rounded (as
    ``nn.LayerNorm`` returns it), then ``h * (1 + scale) + shift`` with ``1 + scale`` rounded (as the
    torch path forms it) and one rounding at the end (as ``torch.addcmul``). With ``FLOAT8`` the rounded
    rows are stored as e4m3 with one scale per row at ``row_scale_ptr``."""
    dtype = x_ptr.dtype.element_ty
    row0 = tl.program_id(0) * BLOCK_M
    base = row0.to(tl.int64) * C  # the program's first element; offsets within its rows fit int32
    rr = tl.arange(0, BLOCK_M)
    r = row0 + rr
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = (r < rows)[:, None] & cmask[None, :]
    offs = rr[:, None] * C + c[None, :]
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / C + eps)
    h = xc * rstd[:, None]
    if AFFINE:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        h = h * w[None, :] + b[None, :]
    h = _round(h, dtype)
    group = (r // rows_per_group)[:, None]
    shift = tl.load(shift_ptr + group * shift_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + group * scale_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
    out = h * _round(1.0 + scale, dtype) + shift
    if FLOAT8:  # the rounded rows as e4m3, each with its scale (amax / 448)
        out = _round(out, dtype)
        amax = tl.maximum(row_amax(out, mask), min_amax)
        tl.store(row_scale_ptr + r, amax / FP8_MAX, mask=r < rows)
        inv = FP8_MAX / amax
        store_quantized(out, mask, offs, out_ptr + base, inv)
    else:
        tl.store(out_ptr + base + offs, out.to(dtype), mask=mask)


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
