"""adaLN modulation and gating in one pass each (Triton), for the DiT blocks in eager mode.

Every DiT block here normalises its tokens and modulates them with per-video rows (``LN(x) * (1 + scale) +
shift``) before its self-attention and its MLP, and gates their outputs (``gate * y``, Latte also adding
the residual). In torch these are a layer norm, then an ``addcmul`` whose ``[G, 1, C]`` operands broadcast
over ``[G, L, C]`` tokens, then a broadcasting multiply: torch runs broadcasting elementwise ops on its
generic strided kernel, about 1.3 TB/s on an H200 against ~4 for a contiguous one (docs/benchmarks.md,
seventh session: the gate multiply took 115 us per Latte block). Here:

* :func:`layer_norm_modulate`: the layer norm and the modulation in one kernel, reading ``x`` once and
  writing the modulated tokens once (the torch path writes and reads the normalised tokens in between);
  :func:`layer_norm_modulate_float8` writes them as e4m3 rows with their scales
  (:mod:`videosys.kernels.float8`); :func:`add_layer_norm_modulate` first adds a residual term (the
  cross-attention's output before the MLP's norm) and writes the sum too;
* :func:`apply_gate`: ``y * gate``, or ``residual + y * gate``, in one kernel; :func:`apply_gate_and_add`
  writes both ``residual + y * gate`` and ``y * gate`` (STDiT3, where PAB keeps the gated product);
  :func:`apply_gate_and_add_float8` also writes the sum as e4m3 rows (the cross-attention's q linear
  reads them under ``--float8``).

Rows of ``x`` (its ``[..., C]`` flattened to ``[rows, C]``) fall into ``G`` equal consecutive groups, one
per row of the ``[G, 1, C]`` (or ``[G, C]``) modulation tensors: one row per video for both STDiT3's
``[B, T*S, C]`` tokens and Latte's ``[B*F, S, C]`` sequences. Values are rounded where the torch path
rounds them (the normalised tokens, ``1 + scale``, the gated product), so the outputs equal the torch
path's up to its layer norm's float32 summation order (tests/test_kernels.py in Triton's CPU interpreter).

Where they apply (:func:`modulation_kernels_apply`): CUDA, Triton, fp16 / bf16, contiguous tokens, eager
mode, no gradient recorded; under ``torch.compile`` Inductor fuses the same ops itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from videosys.kernels.common import (
    HALF_DTYPES,
    autograd_off,
    cdiv,
    triton_available,
)
from videosys.kernels.float8 import FLOAT8_DTYPE, MIN_AMAX, Float8Rows, row_tiles

__all__ = [
    "add_layer_norm_modulate",
    "apply_gate",
    "apply_gate_and_add",
    "apply_gate_and_add_float8",
    "apply_gate_reference",
    "layer_norm_modulate",
    "layer_norm_modulate_float8",
    "layer_norm_modulate_reference",
    "modulation_kernels_apply",
]

#: Rows per program of the layer-norm kernel (each program holds whole rows, as two tiles) and its warps:
#: one row per warp needs no shared memory for its sums. On an H200 back to back (docs/benchmarks.md, ninth
#: session) Open-Sora's tokens took 60.9 us (3.6 TB/s; a copy of them 57.3) against 78.5 with 2 rows and 4
#: warps, Latte's 52.9 against 55.1.
NORM_ROWS_PER_PROGRAM = 1
NORM_NUM_WARPS = 1
#: The gate kernel's tile (rows x channels) and warps.
GATE_BLOCK_ROWS = 16
GATE_BLOCK_CHANNELS = 256
GATE_NUM_WARPS = 4
#: The float8 gate kernel holds whole rows (a row's scale needs all of it): one row per one-warp program,
#: as the norm kernel.
GATE_FLOAT8_NUM_WARPS = 1


def modulation_kernels_apply(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether :func:`layer_norm_modulate` / :func:`apply_gate` take tokens like ``x``: a contiguous CUDA
    tensor in fp16 / bf16, Triton installed, not inside ``torch.compile``'s tracing, and autograd recording
    nothing for ``x`` and the call's ``others`` (modulation rows, affine terms, residual: :func:`autograd_off`)."""
    return (
        x.is_cuda
        and x.dtype in HALF_DTYPES
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
        and triton_available()
        and autograd_off(x, *others)
    )


def _group_rows(x: torch.Tensor, *mods: torch.Tensor) -> tuple[int, int, int]:
    """``(rows, C, rows_per_group)`` of ``x`` for modulation rows ``mods`` (each ``[G, 1, C]`` / ``[G, C]``)."""
    c = x.shape[-1]
    g = mods[0].shape[0]
    for m in mods:
        if m.shape[0] != g or m.shape[-1] != c or m.numel() != g * c:
            raise ValueError(f"modulation rows must be [G, 1, C] or [G, C] with C = {c} and one G, got "
                             f"{[list(t.shape) for t in mods]}")
    rows = x.numel() // c if c else 0
    if g == 0 or rows % g:
        raise ValueError(f"the {rows} token rows of x {list(x.shape)} do not split into {g} modulation groups")
    return rows, c, rows // g


def layer_norm_modulate_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The torch path: ``LN(x) * (1 + scale) + shift`` per group of rows (see the module docstring)."""
    _, c, per_group = _group_rows(x, shift, scale)
    g = shift.shape[0]
    h = F.layer_norm(x.reshape(g, per_group, c), (c,), weight, bias, eps)
    return torch.addcmul(shift.reshape(g, 1, c), h, 1 + scale.reshape(g, 1, c)).reshape(x.shape)


def apply_gate_reference(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The torch path: ``y * gate`` (``+ residual``) per group of rows."""
    _, c, per_group = _group_rows(y, gate)
    out = (y.reshape(gate.shape[0], per_group, c) * gate.reshape(-1, 1, c)).reshape(y.shape)
    return out if residual is None else out + residual


def _kernels() -> Any:
    """The Triton kernels' module (the only one importing Triton; imported on first use)."""
    from videosys.kernels import modulation_triton

    return modulation_triton


def _check_contiguous(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _mod_stride(m: torch.Tensor) -> int:
    """The distance between consecutive groups' rows of ``m`` (whose channels must be contiguous)."""
    if m.stride(-1) != 1 and m.shape[-1] > 1:
        raise ValueError("modulation rows must have contiguous channels")
    return m.stride(0)


@torch.compiler.disable
def layer_norm_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    rows_per_program: int = NORM_ROWS_PER_PROGRAM,
    num_warps: int = NORM_NUM_WARPS,
) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` in one Triton kernel (:func:`layer_norm_modulate_reference` in
    torch). ``x`` ``[..., C]`` contiguous; ``shift`` / ``scale`` ``[G, 1, C]`` (views with contiguous channels,
    e.g. chunks of the block's modulation table); ``weight`` / ``bias``: the norm's affine ``[C]``, or
    ``None``; ``rows_per_program`` (a power of two) / ``num_warps``: launch tuning. Only for inputs
    :func:`modulation_kernels_apply` accepts (the Triton interpreter also runs it on CPU tensors, for
    tests)."""
    out = torch.empty_like(x)
    _launch_norm(x, out, None, shift, scale, eps, weight, bias, rows_per_program, num_warps)
    return out


@torch.compiler.disable
def layer_norm_modulate_float8(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    rows_per_program: int = NORM_ROWS_PER_PROGRAM,
    num_warps: int = NORM_NUM_WARPS,
) -> Float8Rows:
    """:func:`layer_norm_modulate`, its rows (rounded to ``x``'s dtype as that returns them) written as e4m3
    with one scale per row (:func:`videosys.kernels.float8.quantize_rows_reference` of its output), for a
    float8 linear to read."""
    values, row_scale = _float8_buffers(x)
    _launch_norm(x, values, row_scale, shift, scale, eps, weight, bias, rows_per_program, num_warps)
    return Float8Rows(values, row_scale, x.dtype)


@torch.compiler.disable
def add_layer_norm_modulate(
    x: torch.Tensor,
    addend: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    float8: bool = False,
    rows_per_program: int = NORM_ROWS_PER_PROGRAM,
    num_warps: int = NORM_NUM_WARPS,
) -> tuple[torch.Tensor, torch.Tensor | Float8Rows]:
    """``(x + addend, LN(x + addend) * (1 + scale) + shift)`` in one kernel: a residual add (rounded as
    torch's) and the norm + modulation of its result (:func:`layer_norm_modulate`, or its float8 rows with
    ``float8``: :func:`layer_norm_modulate_float8`), reading ``x`` and ``addend`` once instead of the add's
    pass and the norm's read of its output. ``addend`` like ``x`` (shape, dtype, contiguous)."""
    total = torch.empty_like(x)
    if float8:
        values, row_scale = _float8_buffers(x)
        _launch_norm(x, values, row_scale, shift, scale, eps, weight, bias, rows_per_program, num_warps,
                     addend, total)
        return total, Float8Rows(values, row_scale, x.dtype)
    out = torch.empty_like(x)
    _launch_norm(x, out, None, shift, scale, eps, weight, bias, rows_per_program, num_warps, addend, total)
    return total, out


def _float8_buffers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty e4m3 values like ``x`` and one float32 scale per row."""
    values = torch.empty(x.shape, dtype=FLOAT8_DTYPE, device=x.device)
    row_scale = torch.empty(x.numel() // x.shape[-1] if x.shape[-1] else 0, 1, dtype=torch.float32,
                            device=x.device)
    return values, row_scale


def _launch_norm(x: torch.Tensor, out: torch.Tensor, row_scale: torch.Tensor | None, shift: torch.Tensor,
                 scale: torch.Tensor, eps: float, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 rows_per_program: int, num_warps: int, addend: torch.Tensor | None = None,
                 total: torch.Tensor | None = None) -> None:
    rows, c, per_group = _group_rows(x, shift, scale)
    _check_contiguous(x=x, addend=addend)
    if addend is not None and (addend.shape != x.shape or addend.dtype != x.dtype):
        raise ValueError(f"addend must match x: {list(addend.shape)} {addend.dtype} against {list(x.shape)} "
                         f"{x.dtype}")
    if (weight is None) != (bias is None):
        raise ValueError("the layer norm's weight and bias come together (both or neither)")
    if rows == 0:
        return
    affine = weight is not None
    block_c, block_c_rest = row_tiles(c)
    _kernels().layer_norm_modulate_kernel[(cdiv(rows, rows_per_program),)](
        x, x if addend is None else addend, x if total is None else total, out, shift, scale,
        weight if affine else x, bias if affine else x, x if row_scale is None else row_scale,
        rows, c, per_group, _mod_stride(shift), _mod_stride(scale), eps, MIN_AMAX,
        ADD=addend is not None, AFFINE=affine, FLOAT8=row_scale is not None, BLOCK_M=rows_per_program,
        BLOCK_C=block_c, BLOCK_C_REST=block_c_rest, INTERPRETED=not x.is_cuda, num_warps=num_warps,
    )


@torch.compiler.disable
def apply_gate(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``y * gate`` (``+ residual``) in one Triton kernel (:func:`apply_gate_reference` in torch). ``y`` and
    ``residual`` ``[..., C]`` contiguous and alike; ``gate`` ``[G, 1, C]`` with contiguous channels."""
    return _launch_gate(y, gate, residual, product=False)[0]


@torch.compiler.disable
def apply_gate_and_add(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual + y * gate, y * gate)`` in one Triton kernel: the updated residual stream and the gated
    product itself (what PAB keeps of an STDiT3 module), each rounded as :func:`apply_gate_reference` rounds
    it. Arguments as for :func:`apply_gate`."""
    out, product = _launch_gate(y, gate, residual, product=True)
    assert product is not None
    return out, product


@torch.compiler.disable
def apply_gate_and_add_float8(
    y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor, *, product: bool
) -> tuple[torch.Tensor, torch.Tensor | None, Float8Rows]:
    """``(residual + y * gate, y * gate or None, the sum as e4m3 rows)`` in one Triton kernel: the gated
    residual update (:func:`apply_gate_and_add`; the product only with ``product``) and its rows, rounded
    as returned, quantized with one scale per row (:func:`videosys.kernels.float8.quantize_rows_reference`
    of the sum) for the float8 linear that reads the updated stream next. Arguments as for
    :func:`apply_gate`."""
    rows, c, per_group = _gate_rows(y, gate, residual)
    out = torch.empty_like(y)
    prod = torch.empty_like(y) if product else None
    values, row_scale = _float8_buffers(y)
    if rows:
        block_c, block_c_rest = row_tiles(c)
        _kernels().gate_float8_kernel[(rows,)](
            y, gate, residual, out, out if prod is None else prod, values, row_scale,
            c, per_group, _mod_stride(gate), MIN_AMAX,
            PRODUCT=prod is not None, BLOCK_C=block_c, BLOCK_C_REST=block_c_rest, INTERPRETED=not y.is_cuda,
            num_warps=GATE_FLOAT8_NUM_WARPS,
        )
    return out, prod, Float8Rows(values, row_scale, y.dtype)


def _gate_rows(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None) -> tuple[int, int, int]:
    """The gate kernels' checks; ``(rows, C, rows_per_group)`` of ``y``."""
    rows, c, per_group = _group_rows(y, gate)
    _check_contiguous(y=y, residual=residual)
    if residual is not None and (residual.shape != y.shape or residual.dtype != y.dtype):
        raise ValueError(f"residual must match y: {list(residual.shape)} {residual.dtype} against "
                         f"{list(y.shape)} {y.dtype}")
    return rows, c, per_group


def _launch_gate(y: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor | None,
                 product: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows, c, per_group = _gate_rows(y, gate, residual)
    out = torch.empty_like(y)
    prod = torch.empty_like(y) if product else None
    if rows == 0:
        return out, prod
    grid = (cdiv(rows, GATE_BLOCK_ROWS), cdiv(c, GATE_BLOCK_CHANNELS))
    _kernels().gate_kernel[grid](
        y, gate, y if residual is None else residual, out, out if prod is None else prod,
        rows, c, per_group, _mod_stride(gate),
        RESIDUAL=residual is not None, PRODUCT=prod is not None, BLOCK_M=GATE_BLOCK_ROWS,
        BLOCK_C=GATE_BLOCK_CHANNELS, num_warps=GATE_NUM_WARPS,
    )
    return out, prod
