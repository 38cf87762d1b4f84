"""A linear layer followed by tanh-approximate GELU, fused into the GEMM where cuBLASLt can.

Both DiT MLPs (STDiT3's ``fc1``, Latte's ``ff.net.0.proj``) apply ``gelu(x W^T + b, approximate="tanh")``.
In eager mode on CUDA, :func:`linear_gelu_tanh` runs it as one cuBLASLt GEMM with a GELU epilogue
(``torch._addmm_activation(..., use_gelu=True)``) instead of a GEMM that writes its output and a GELU pass
that reads and writes it again. The epilogue applies GELU to the float32 accumulator and rounds once; the
tanh and exact GELU differ by less than 3e-4 (a bf16 step near 1 is 8e-3). At Open-Sora's
``[44520, 1152] x [1152, 4608]`` on an H200: 0.69 ms against 0.91 ms, max abs error against a float32 tanh
reference 0.0156 against 0.0162 (``python scripts/bench_kernels.py``, docs/benchmarks.md). Elsewhere (the
CPU, whose ``_addmm_activation`` applies the exact GELU; float32; inside ``torch.compile``, which fuses the
GELU itself) it is the plain two-step tanh form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear_gelu_tanh"]

_EPILOGUE_DTYPES = (torch.float16, torch.bfloat16)


def linear_gelu_tanh(x: torch.Tensor, linear: nn.Linear, *, epilogue: bool | None = None) -> torch.Tensor:
    """``gelu(linear(x), approximate="tanh")`` for ``x`` ``[..., in_features]``.

    ``epilogue``: ``None`` (default) uses the GEMM's GELU epilogue where it is the tanh GELU and pays (a
    CUDA fp16 / bf16 input with a bias, eager mode); ``True`` / ``False`` force one form (tests).
    """
    if epilogue is None:
        epilogue = (
            x.is_cuda
            and x.dtype in _EPILOGUE_DTYPES
            and linear.bias is not None
            and not torch.compiler.is_compiling()
        )
    if not epilogue or linear.bias is None:
        return F.gelu(linear(x), approximate="tanh")
    rows = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(linear.bias, rows, linear.weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], linear.out_features)
