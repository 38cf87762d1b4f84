"""How PAB keeps a module output between the call that computes it and the calls that broadcast it.

PAB's memory cost is the kept outputs: at most one per broadcastable module while a broadcast still needs
it (Open-Sora 480p 2s: about 105 MB per module in bf16, some 100 modules; docs/benchmarks.md). The format
is a field of the PAB setting (:attr:`videosys.pab.PABConfig.cache`):

* ``"native"`` keeps the tensor as computed (the reference behaviour; the broadcast returns it unchanged);
* ``"int8"`` keeps floating-point tensors as int8 with one float32 scale per row of the last dimension
  (symmetric, ``scale = max|row| / 127``), and restores them to their dtype on the broadcast: about half
  the memory of bf16/fp16 outputs and a quarter of fp32 ones, for a rounding error of at most
  ``max|row| / 254`` per element (PAB's own approximation, reusing a stale output, is far larger; the
  measured effect on videos is in docs/pab.md).

Outputs that are not floating-point tensors are kept as they are in either format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import check_cache_format

__all__ = ["KeptInt8", "keep", "kept_nbytes", "restore"]

_INT8_MAX = 127.0


@dataclass(frozen=True)
class KeptInt8:
    """An output kept as int8 rows: ``values`` (int8, the output's shape), ``scales`` (float32, the shape
    with a last dimension of 1) and the dtype to restore."""

    values: torch.Tensor
    scales: torch.Tensor
    dtype: torch.dtype

    def restore(self) -> torch.Tensor:
        # one pass: int8 in, the dtype out, each product formed in float32 (the scale's dtype) and rounded
        # once on the store, the same numbers as widening, multiplying and narrowing in three passes
        out = torch.empty(self.values.shape, dtype=self.dtype, device=self.values.device)
        return torch.mul(self.values, self.scales, out=out)


def keep(output: Any, fmt: str) -> Any:
    """``output`` in the kept format ``fmt`` (one of :data:`CACHE_FORMATS`)."""
    if fmt == "native" or not _quantizable(output):
        return output
    if fmt != "int8":
        check_cache_format(fmt, "fmt")  # raises: a format this function does not know
    x = output.detach()  # never written to: it is also the step's result
    # max|row| in one reduction pass (no |x| tensor); exact in any dtype
    row_max = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    scales = row_max / _INT8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row stays zero
    # The division in float32. No clamp is needed: |x| <= row_max and the scale is row_max / 127 within
    # float32 rounding, so |x / scale| <= 127 * (1 + 2**-22) < 127.5, which rounds to at most 127.
    values = torch.div(x, scales).round_().to(torch.int8)
    return KeptInt8(values=values, scales=scales, dtype=output.dtype)


def restore(kept: Any) -> Any:
    """The output a broadcast returns for what :func:`keep` made."""
    return kept.restore() if isinstance(kept, KeptInt8) else kept


def kept_nbytes(kept: Any) -> int:
    """Bytes of device or host memory a kept output holds (0 for what is not a tensor)."""
    if isinstance(kept, KeptInt8):
        return _nbytes(kept.values) + _nbytes(kept.scales)
    return _nbytes(kept) if isinstance(kept, torch.Tensor) else 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quantizable(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim >= 1 \
        and output.shape[-1] > 0
