"""The Triton kernel of :func:`videosys.kernels.rms_norm.rms_norm_rows` (this module imports Triton;
:mod:`videosys.kernels.rms_norm` imports it on first use only)."""

import triton
import triton.language as tl

__all__ = ["rms_norm_rows_kernel"]


@triton.jit
def rms_norm_rows_kernel(x_ptr, w_ptr, out_ptr, rows, eps, D: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """``BLOCK_R`` rows of ``D`` channels per program: the mean square in float32, ``x * rstd * w`` in
    float32, one rounding (as ``F.rms_norm`` on CUDA)."""
    dtype = out_ptr.dtype.element_ty
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = (r < rows)[:, None] & (d < D)[None, :]
    offs = r[:, None] * D + d[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    w = tl.load(w_ptr + d, mask=d < D, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (x * rstd[:, None] * w[None, :]).to(dtype), mask=mask)
