"""Float8 (e4m3) linears whose activations are quantized by the kernel that produces them.

Hopper and Ada GPUs multiply e4m3 matrices about 1.3-1.6x faster than bf16 ones at a DiT block's shapes
(docs/benchmarks.md, seventh session), but quantizing an activation in a pass of its own costs about what
the GEMM saves. Here the quantize happens where the activation is made: the layer norm + modulation kernel
(:func:`videosys.kernels.modulation.layer_norm_modulate_float8`) writes the modulated tokens as e4m3 with
one float32 scale per row, which feed the self-attention's ``qkv`` and the MLP's first linear; the MLP's
GELU runs in :func:`quantize_rows` (``gelu=True``), which writes the second linear's input the same way;
STDiT3's self-attention gate + residual kernel
(:func:`videosys.kernels.modulation.apply_gate_and_add_float8`) writes the updated stream's rows for the
cross-attention's q linear (a separate quantize pass there would cost what the float8 GEMM saves).

* :class:`Float8Rows`: e4m3 ``values [..., K]`` and a float32 ``scale [rows, 1]``, ``values * scale`` the
  activation (one scale per row: a token's channels share it);
* :class:`Float8Weight`: a linear's weight as e4m3 with one scale per output channel, and its bias;
* :func:`float8_linear`: ``torch._scaled_mm`` of the two (float32 accumulation, output in the model dtype).

This changes numerics (3 mantissa bits per operand; docs/benchmarks.md, eighth session, has the measured
error), so it is a flag, off by default: ``VideoSysEngine(float8=True)``, ``--float8``. Where it applies
(:func:`float8_applies`): where the modulation kernels apply (eager CUDA fp16 / bf16, Triton, no autograd)
on a GPU of compute capability 8.9 or newer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels.common import cdiv, next_power_of_2, triton_available

__all__ = [
    "FLOAT8_DTYPE",
    "FLOAT8_MAX",
    "Float8Rows",
    "Float8Weight",
    "float8_applies",
    "float8_linear",
    "float8_unavailable",
    "quantize_rows",
    "quantize_rows_reference",
]

FLOAT8_DTYPE = torch.float8_e4m3fn
#: The largest finite e4m3 value: each row's (or output channel's) absolute maximum maps to it.
FLOAT8_MAX = 448.0
#: A row whose absolute maximum is below this keeps this scale (an all-zero row quantizes to zeros).
MIN_AMAX = 1e-12
#: The alignment in bytes cuBLAS needs of a scale vector's start (CUBLAS_STATUS_NOT_SUPPORTED otherwise).
SCALE_ALIGN = 16
#: The compute capability from which GPUs multiply e4m3 matrices (Ada 8.9, Hopper 9.0).
MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class Float8Rows:
    """An activation ``[..., K]`` as e4m3 ``values`` and one float32 ``scale`` per row (``[rows, 1]``, rows
    = the product of the leading dimensions): ``values * scale`` is the activation; ``dtype`` is the dtype
    it stands for (a float8 linear returns that dtype)."""

    values: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    def __post_init__(self) -> None:
        rows = self.values.numel() // self.values.shape[-1] if self.values.shape[-1] else 0
        if self.values.dtype != FLOAT8_DTYPE:
            raise ValueError(f"Float8Rows values must be {FLOAT8_DTYPE}, got {self.values.dtype}")
        if tuple(self.scale.shape) != (rows, 1) or self.scale.dtype != torch.float32:
            raise ValueError(f"Float8Rows scale must be float32 [{rows}, 1], got {self.scale.dtype} "
                             f"{list(self.scale.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    # what the kernels' checks read of an activation
    @property
    def is_cuda(self) -> bool:
        return self.values.is_cuda

    @property
    def requires_grad(self) -> bool:
        return False

    def reshape(self, *shape: int) -> Float8Rows:
        """The same rows under another leading shape (the last dimension stays)."""
        values = self.values.reshape(*shape)
        if values.shape[-1] != self.values.shape[-1]:
            raise ValueError(f"Float8Rows can only be reshaped keeping its rows, not {list(self.shape)} -> "
                             f"{list(values.shape)}")
        return Float8Rows(values, self.scale, self.dtype)

    def select(self, index: int) -> Float8Rows:
        """The rows of ``values[index]`` (one entry of the first dimension, e.g. one sample's tokens)."""
        if self.values.ndim < 2 or not 0 <= index < self.values.shape[0]:
            raise ValueError(f"Float8Rows.select: no entry {index} in the first dimension of {list(self.shape)}")
        per_entry = self.scale.shape[0] // self.values.shape[0]
        scale = self.scale[index * per_entry:(index + 1) * per_entry]
        if scale.data_ptr() % SCALE_ALIGN:  # cuBLAS refuses a row-scale vector that starts off 16 bytes
            scale = scale.clone()
        return Float8Rows(self.values[index], scale, self.dtype)

    def moved(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Float8Rows:
        """The rows as ``move`` rearranges them: ``move`` takes a ``[..., D]`` tensor with this one's leading
        shape and only moves whole rows (a sequence-parallel all-to-all); it moves the values (as bytes,
        which every collective carries) and the scales (as ``[..., 1]``) alike."""
        lead = self.values.shape[:-1]
        values = move(self.values.view(torch.uint8)).contiguous().view(FLOAT8_DTYPE)
        scale = move(self.scale.reshape(*lead, 1))
        return Float8Rows(values, scale.reshape(-1, 1), self.dtype)

    def dequantize(self) -> torch.Tensor:
        k = self.values.shape[-1]
        return (self.values.reshape(-1, k).float() * self.scale).to(self.dtype).reshape(self.shape)


@dataclass(frozen=True)
class Float8Weight:
    """A linear layer's ``[N, K]`` weight as e4m3 with one float32 scale per output channel (``[1, N]``) and
    its bias (model dtype) or ``None``: a frozen copy, made by :meth:`from_linear` after the weights load."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Weight:
        return cls.from_matrix(linear.weight, linear.bias)

    @classmethod
    def from_matrix(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Float8Weight:
        """A ``[N, K]`` matrix (e.g. a folded cross-attention's, used as a weight) and an optional bias."""
        with torch.no_grad():
            w = weight.detach().float()
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(MIN_AMAX) / FLOAT8_MAX  # [N, 1]
            values = (w / scale).clamp(-FLOAT8_MAX, FLOAT8_MAX).to(FLOAT8_DTYPE)
        return cls(values, scale.t().contiguous(), None if bias is None else bias.detach())

    @classmethod
    def stacked(cls, weights: list[Float8Weight]) -> Float8Weight:
        """The output channels of ``weights`` side by side (e.g. q, k and v as one ``qkv`` GEMM)."""
        biases = [w.bias for w in weights]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("stacked float8 weights must all have a bias or none")
        return cls(torch.cat([w.weight for w in weights]), torch.cat([w.scale for w in weights], dim=1),
                   None if biases[0] is None else torch.cat(biases))  # type: ignore[arg-type]

    def rows(self, part: slice) -> Float8Weight:
        """The output channels ``part`` (e.g. the q rows of a fused ``qkv`` weight): views, no copies."""
        return Float8Weight(self.weight[part], self.scale[:, part],
                            None if self.bias is None else self.bias[part])


def float8_linear(x: Float8Rows, w: Float8Weight, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` from e4m3 operands: ``[..., K]`` -> ``[..., N]`` in ``x.dtype``; ``out``: a
    contiguous tensor of that shape and dtype to write it into (e.g. one group's slice of a larger one)."""
    k = x.shape[-1]
    n = w.weight.shape[0]
    if w.weight.shape[1] != k:
        raise ValueError(f"float8_linear: input has {k} channels, the weight takes {w.weight.shape[1]}")
    values = x.values.reshape(-1, k)
    if out is None:
        result = torch._scaled_mm(values, w.weight.t(), scale_a=x.scale, scale_b=w.scale, bias=w.bias,
                                  out_dtype=x.dtype, use_fast_accum=True)
        return result.reshape(*x.shape[:-1], n)
    if out.shape != (*x.shape[:-1], n) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"float8_linear: out must be a contiguous {x.dtype} tensor of shape "
                         f"{[*x.shape[:-1], n]}, got {out.dtype} {list(out.shape)}")
    torch._scaled_mm(values, w.weight.t(), scale_a=x.scale, scale_b=w.scale, bias=w.bias, out_dtype=x.dtype,
                     use_fast_accum=True, out=out.view(-1, n))
    return out


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def float8_unavailable(device: torch.device) -> str | None:
    """Why float8 linears cannot run on ``device`` (a sentence), or ``None`` when they can: a CUDA GPU of
    compute capability 8.9+ with Triton installed (the kernels that write the e4m3 activations)."""
    if device.type != "cuda":
        return f"float8 linears need a CUDA GPU (the device is {device})"
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if (major, minor) < MIN_CAPABILITY:
        return (f"float8 linears need compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ (Ada, "
                f"Hopper), this GPU has {major}.{minor}")
    if not triton_available():
        return "float8 linears need Triton (the kernels that quantize the activations)"
    return None


def float8_applies(x: torch.Tensor) -> bool:
    """Whether the float8 path can take activations like ``x`` (already accepted by the modulation kernels'
    check): on a device where :func:`float8_unavailable` finds nothing missing."""
    return x.is_cuda and float8_unavailable(x.device) is None


def quantize_rows_reference(x: torch.Tensor, *, gelu: bool = False) -> Float8Rows:
    """The torch path of :func:`quantize_rows` (also the definition the kernels follow)."""
    k = x.shape[-1]
    v = x.reshape(-1, k)
    if gelu:
        v = F.gelu(v.float(), approximate="tanh").to(x.dtype)
    v = v.float()
    amax = v.abs().amax(dim=1, keepdim=True).clamp_min(MIN_AMAX)
    inverse = torch.full_like(amax, FLOAT8_MAX) / amax  # a true division (``448 / t`` multiplies by 1 / t)
    q = (v * inverse).clamp(-FLOAT8_MAX, FLOAT8_MAX).to(FLOAT8_DTYPE)
    return Float8Rows(q.reshape(x.shape), amax / FLOAT8_MAX, x.dtype)


def row_tiles(k: int) -> tuple[int, int]:
    """Two power-of-two tile widths that cover ``k`` columns: the largest power of two not above ``k``, and
    the power of two that covers the rest (``0`` when nothing is left): 4608 -> (4096, 512), 1152 ->
    (1024, 128), 1000 -> (512, 512)."""
    first = 1 << (k.bit_length() - 1) if k > 0 else 1
    rest = k - first
    return first, next_power_of_2(rest) if rest > 0 else 0


def quantize_launch(k: int) -> tuple[int, int]:
    """(rows per program, warps) of :func:`quantize_rows` for rows of ``k`` values: each program holds whole
    rows, so long rows (the MLP's hidden width) take one row per program."""
    return (1, 4) if k > 2048 else (1, 1)


def _kernels() -> Any:
    from videosys.kernels import float8_triton

    return float8_triton


@torch.compiler.disable
def quantize_rows(x: torch.Tensor, *, gelu: bool = False, rows_per_program: int | None = None,
                  num_warps: int | None = None) -> Float8Rows:
    """Contiguous ``x`` ``[..., K]`` (fp16 / bf16) as :class:`Float8Rows` in one Triton pass; with ``gelu``
    the rows go through a tanh GELU first (the MLP's activation, then its second linear's input).
    Each row is read as two power-of-two tiles (:func:`row_tiles`: at the MLP's 4608 channels one tile of
    8192 lanes was 1.5x slower on an H200; docs/benchmarks.md, eighth session); the GELU + quantize of an
    Open-Sora MLP tensor takes 0.21 ms there (ninth session). ``rows_per_program`` / ``num_warps``: launch
    tuning (default: :func:`quantize_launch`)."""
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    values = torch.empty(x.shape, dtype=FLOAT8_DTYPE, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows:
        default_rows, default_warps = quantize_launch(k)
        block_m = rows_per_program or default_rows
        block_k, rest = row_tiles(k)
        _kernels().quantize_rows_kernel[(cdiv(rows, block_m),)](
            x, values, scale, rows, k, MIN_AMAX, GELU=gelu, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_K_REST=rest,
            INTERPRETED=not x.is_cuda,
            num_warps=num_warps or default_warps,
        )
    return Float8Rows(values, scale, x.dtype)
