"""What every kernel of :mod:`videosys.kernels` checks or computes the same way: whether Triton is there,
whether autograd would record the call, the dtypes the kernels take, launch-size arithmetic."""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Iterable

import torch

__all__ = ["HALF_DTYPES", "autograd_off", "cdiv", "next_power_of_2", "triton_available"]

#: The dtypes the kernels take (float32 keeps the torch path; the tests run float32 in the interpreter).
HALF_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None  # ~0.1 ms: asked once per process


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether Triton is installed (a constant to Dynamo, which bakes the answer into compiled code)."""
    return _triton_installed()


def autograd_off(*tensors: torch.Tensor | None, params: Iterable[torch.Tensor] = ()) -> bool:
    """Whether autograd records nothing for ops on ``tensors`` and ``params`` (e.g. a module's
    ``parameters()``, walked only when grad mode is on: a walk per check cost the host ~10% of a float8
    Open-Sora call; docs/benchmarks.md, twelfth session): grad mode is off (the pipelines denoise under
    ``torch.inference_mode``) or none of them requires a gradient. The Triton kernels have no backward, so
    where autograd records (training, fine-tuning) the torch path runs."""
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in itertools.chain(tensors, params))


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
