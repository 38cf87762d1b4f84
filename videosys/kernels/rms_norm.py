"""RMS norm over short rows (a DiT's qk-norm over ``head_dim``) in one Triton pass.

STDiT3's spatial blocks normalise q and k over each head's 72 channels: ``[B*T, S, heads, 72]``, 51 M
values per tensor at Open-Sora's 480p 2s. torch's fused kernel gives every row its own thread block, which
for 72-channel rows took 0.54 ms per tensor on an H200 (a fifth of the bandwidth; 30 ms per eager Open-Sora
call, docs/benchmarks.md, seventh session). :func:`rms_norm_rows` takes many rows per program instead.
Its arithmetic is ``F.rms_norm``'s (float32 statistic and scaling, one rounding), so it returns what the
torch path returns up to the float32 summation order (tests/test_kernels.py, Triton's CPU interpreter).
"""

from __future__ import annotations

from typing import Any

import torch

from videosys.kernels.common import (
    HALF_DTYPES,
    autograd_off,
    cdiv,
    next_power_of_2,
    triton_available,
)

__all__ = ["MAX_ROW", "rms_norm_rows", "rms_norm_rows_applies"]

#: The longest row the kernel takes (longer rows keep ``F.rms_norm``, whose per-row blocks suit them).
MAX_ROW = 128
#: Rows per program and warps.
ROWS_PER_PROGRAM = 64
NUM_WARPS = 4


def rms_norm_rows_applies(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether :func:`rms_norm_rows` takes ``x``: a contiguous CUDA tensor in fp16 / bf16 with at most
    :data:`MAX_ROW` channels, Triton installed, not inside ``torch.compile``'s tracing (Inductor generates
    its own kernel there), and autograd recording nothing for ``x`` and ``weight``
    (:func:`videosys.kernels.common.autograd_off`)."""
    return (
        x.is_cuda
        and x.dtype in HALF_DTYPES
        and 0 < x.shape[-1] <= MAX_ROW
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and triton_available()
        and autograd_off(x, weight)
    )


def _kernel() -> Any:
    from videosys.kernels.rms_norm_triton import rms_norm_rows_kernel

    return rms_norm_rows_kernel


@torch.compiler.disable
def rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.rms_norm(x, (D,), weight, eps)`` for contiguous ``x`` ``[..., D]`` (``D`` <= :data:`MAX_ROW`) and
    ``weight`` ``[D]`` in ``x``'s dtype, in one Triton kernel."""
    d = x.shape[-1]
    if not 0 < d <= MAX_ROW:
        raise ValueError(f"rms_norm_rows takes rows of 1 to {MAX_ROW} channels, got {d}")
    if tuple(weight.shape) != (d,):
        raise ValueError(f"weight must be [{d}], got {list(weight.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    out = torch.empty_like(x)
    rows = x.numel() // d
    if rows:
        _kernel()[(cdiv(rows, ROWS_PER_PROGRAM),)](
            x, weight, out, rows, eps, D=d, BLOCK_R=ROWS_PER_PROGRAM, BLOCK_D=next_power_of_2(d),
            num_warps=NUM_WARPS,
        )
    return out
