"""Run by tests/test_folded_attention.py in a child process with ``TRITON_INTERPRET=1`` (Triton's CPU
interpreter): the folded cross-attention's softmax kernel (and the GEMMs around it) inside STDiT3's cross-attention and the shared
Attention module (fp16, bf16; padded keys, masks, a group with no valid key, with and without biases),
each against the unfolded module in float32. Prints one JSON object: relative errors (the norm of the
difference over the output's) of the kernel and of the unfolded module in the same dtype, and the kernel's
calls."""

from __future__ import annotations

import copy
import json
import os

import torch

from videosys.kernels import folded_attention as kernel_module
from videosys.kernels.common import HALF_DTYPES
from videosys.models.layers import folded_attention as layer_module
from videosys.models.layers.attention import Attention
from videosys.models.opensora.stdit3 import CrossAttention


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def cases() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    calls = [0]
    rows = kernel_module.head_softmax_rows

    def counted(*args, **kwargs):
        calls[0] += 1
        return rows(*args, **kwargs)

    layer_module.head_softmax_rows = counted
    # the interpreter runs CPU tensors: the kernel for every half-precision call (its rules: the pytest)
    layer_module.folded_attention_kernel_applies = lambda x, *args: x.dtype in HALF_DTYPES
    out: dict[str, float] = {}
    stdit3 = CrossAttention(128, 4)
    attention = Attention(128, heads=4, dim_head=32, cross_attention_dim=48, bias=True)
    plain = Attention(128, heads=4, dim_head=32, cross_attention_dim=48, bias=False, out_bias=False)
    for module in (stdit3, attention, plain):
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(3, 70, 128, generator=g)  # 70 rows: a partial tile of 64
    y, context = torch.randn(3, 5, 128, generator=g), torch.randn(3, 20, 48, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    context_mask = torch.ones(3, 20, dtype=torch.bool)
    context_mask[0, 7:] = False
    context_mask[1] = False  # no valid key: the attention's zeros, the output bias alone
    runs = {
        "stdit3": (stdit3, (x, y, mask)), "stdit3 no mask": (stdit3, (x, y, None)),
        "attention": (attention, (x, context, context_mask)), "attention no biases": (plain, (x, context, None)),
    }
    for name, (module, args) in runs.items():
        with torch.no_grad():
            module.fold_short_context = False
            want = module(*args)
            for dtype in (torch.float16, torch.bfloat16):
                half = copy.deepcopy(module).to(dtype)
                low = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                half.fold_short_context = False
                out[f"{name} {str(dtype)[6:]} unfolded"] = relative(half(*low), want)
                half.fold_short_context = True
                before = calls[0]
                out[f"{name} {str(dtype)[6:]} kernel"] = relative(half(*low), want)
                out[f"{name} {str(dtype)[6:]} kernel calls"] = float(calls[0] - before)
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps(cases()))
