"""Normalisation layers not covered by ``torch.nn``, and adaLN modulation and gating.

:func:`norm_modulate` (:func:`add_norm_modulate`: after a residual add) and :func:`gated` take modulation
rows ``[G, 1, C]`` for tokens ``[..., C]`` whose rows fall into ``G`` equal consecutive groups (one per
video); in eager mode on CUDA they run as one Triton kernel each (:mod:`videosys.kernels.modulation`),
elsewhere as the torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels.float8 import Float8Rows, float8_applies
from videosys.kernels.modulation import (
    add_layer_norm_modulate,
    apply_gate,
    apply_gate_and_add,
    apply_gate_and_add_float8,
    apply_gate_reference,
    layer_norm_modulate,
    layer_norm_modulate_float8,
    layer_norm_modulate_reference,
    modulation_kernels_apply,
)
from videosys.kernels.rms_norm import rms_norm_rows, rms_norm_rows_applies

__all__ = ["RMSNorm", "add_norm_modulate", "gated", "gated_add", "gated_add_float8", "modulate", "norm_modulate"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` as one fused multiply-add pass over ``x`` (one rounding
    instead of two in bf16)."""
    return torch.addcmul(shift, x, 1 + scale)


def norm_modulate(
    norm: nn.LayerNorm,
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    fused: bool = True,
    float8: bool = False,
) -> torch.Tensor | Float8Rows:
    """``modulate(norm(x), shift, scale)`` with ``shift`` / ``scale`` ``[G, 1, C]`` one row per group of
    ``x``'s rows; one kernel where :func:`videosys.kernels.modulation.modulation_kernels_apply` and
    ``fused``. With ``float8`` (and where :func:`videosys.kernels.float8.float8_applies`) that kernel
    returns the rows as :class:`~videosys.kernels.float8.Float8Rows` for float8 linears."""
    if _norm_kernel_applies(norm, x, shift, scale, fused):
        if float8 and float8_applies(x):
            return layer_norm_modulate_float8(x, shift, scale, norm.eps, norm.weight, norm.bias)
        return layer_norm_modulate(x, shift, scale, norm.eps, norm.weight, norm.bias)
    return layer_norm_modulate_reference(x, shift, scale, norm.eps, norm.weight, norm.bias)


def add_norm_modulate(
    norm: nn.LayerNorm,
    x: torch.Tensor,
    addend: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    fused: bool = True,
    float8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | Float8Rows]:
    """``(x + addend, norm_modulate(norm, x + addend, ...))``: a residual add and the next module's norm +
    modulation, in one kernel pass where :func:`norm_modulate`'s kernel applies (and ``addend`` is like
    ``x``), reading the two terms once instead of the add's pass and the norm's read of its result."""
    if (
        _norm_kernel_applies(norm, x, shift, scale, fused, addend)
        and addend.is_contiguous()
        and addend.shape == x.shape
        and addend.dtype == x.dtype
    ):
        return add_layer_norm_modulate(x, addend, shift, scale, norm.eps, norm.weight, norm.bias,
                                       float8=float8 and float8_applies(x))
    total = x + addend
    return total, norm_modulate(norm, total, shift, scale, fused=fused, float8=float8)


def _norm_kernel_applies(
    norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fused: bool,
    *others: torch.Tensor,
) -> bool:
    if tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError(f"norm_modulate needs a layer norm over the last dimension ({x.shape[-1]}), got "
                         f"normalized_shape {tuple(norm.normalized_shape)}")
    return (
        fused
        and shift.stride(-1) == 1
        and scale.stride(-1) == 1
        and (norm.weight is None) == (norm.bias is None)  # the kernel takes both affine terms or neither
        and modulation_kernels_apply(x, shift, scale, norm.weight, norm.bias, *others)
    )


def gated(
    y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None = None, *, fused: bool = True
) -> torch.Tensor:
    """``y * gate`` (``+ residual``) with ``gate`` ``[G, 1, C]`` one row per group of ``y``'s rows; one
    kernel where :func:`videosys.kernels.modulation.modulation_kernels_apply` and ``fused``."""
    if _gate_kernel_applies(y, gate, residual, fused):
        return apply_gate(y, gate, residual)
    return apply_gate_reference(y, gate, residual)


def gated_add(
    y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor, *, keep_product: bool, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(residual + y * gate, y * gate)``, the product only with ``keep_product`` (else ``None``): the
    residual update of a gated module whose output PAB may keep. One kernel pass where the kernels apply
    (reading ``y`` and ``residual`` once), instead of the gate's pass and the residual add's."""
    if not keep_product:
        return gated(y, gate, residual, fused=fused), None
    if _gate_kernel_applies(y, gate, residual, fused):
        return apply_gate_and_add(y, gate, residual)
    product = apply_gate_reference(y, gate)
    return residual + product, product


def gated_add_float8(
    y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor, *, keep_product: bool, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, Float8Rows | None]:
    """:func:`gated_add` and the sum as :class:`~videosys.kernels.float8.Float8Rows` from the same kernel pass
    (:func:`videosys.kernels.modulation.apply_gate_and_add_float8`), for the float8 linear that reads the
    updated stream next; ``None`` for the rows where that kernel does not apply (the linear then reads the
    sum itself)."""
    if _gate_kernel_applies(y, gate, residual, fused) and float8_applies(y):
        return apply_gate_and_add_float8(y, gate, residual, product=keep_product)
    return (*gated_add(y, gate, residual, keep_product=keep_product, fused=fused), None)


def _gate_kernel_applies(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None, fused: bool) -> bool:
    return (
        fused
        and gate.stride(-1) == 1
        and modulation_kernels_apply(y, gate, residual)
        and (residual is None or (residual.is_contiguous() and residual.dtype == y.dtype))
    )


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned scale (Llama style).

    ``torch.nn.functional.rms_norm``: one fused kernel on CUDA (statistic and scaling in float32, one rounding
    to the input dtype at the end). The unfused form, which rounds the normalised values to bf16 before the
    multiplication by ``weight``, took about 7 full passes over q and k in every qk-normed block; the two
    differ by at most one bf16 rounding step. torch's kernel gives each row a thread block, slow for
    head_dim rows: those go through :func:`videosys.kernels.rms_norm.rms_norm_rows` (same arithmetic) in
    eager CUDA mode.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        #: rows of at most 128 channels (a qk-norm over head_dim) through one Triton kernel where it
        #: applies (eager CUDA, fp16 / bf16: :func:`videosys.kernels.rms_norm.rms_norm_rows`); ``False``
        #: keeps ``F.rms_norm`` (:func:`videosys.kernels.use_fused_kernels`)
        self.fused_kernel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        if self.fused_kernel and rms_norm_rows_applies(x, weight):
            return rms_norm_rows(x, weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
