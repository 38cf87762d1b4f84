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
from videosys.kernels.float8 import FLOAT8_DTYPE, quantize_rows_reference
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


def e4m3_steps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference of two e4m3 tensors in e4m3 steps at ``want``'s magnitude (1/8 of its power
    of two; below the normal range the subnormal step 2^-9)."""
    a, b = got.float(), want.float()
    step = torch.maximum(torch.exp2(torch.floor(torch.log2(b.abs().clamp_min(1e-30)))) / 8, torch.tensor(2.0**-9))
    return ((a - b).abs() / step).max().item()


def float8_cases() -> dict[str, float]:
    """``--float8``: the softmax kernel writing e4m3 probabilities, and STDiT3's folded cross-attention
    reading float8 rows (its first GEMM from e4m3 operands; with ``float8_probabilities`` both) against the
    float32 unfolded module and against the same float8 arithmetic written in torch from the module's own
    folded operands."""
    g = torch.Generator().manual_seed(1)
    out: dict[str, float] = {}
    heads, keys = 4, 5
    width = kernel_module.folded_row_width(heads, keys)
    scores = torch.randn(2, 70, width, generator=g).to(torch.bfloat16)
    bias = torch.randn(2, heads * keys, generator=g)
    bias[0, 3] = float("-inf")  # a masked key
    before = scores.clone()
    probs = kernel_module.head_softmax_rows(scores, bias, heads, keys, 0.3,
                                            out=torch.empty(2, 70, width, dtype=FLOAT8_DTYPE))
    logits = scores[..., : heads * keys].float() * 0.3 + bias[:, None]
    want = logits.view(2, 70, heads, keys).softmax(-1).view(2, 70, heads * keys) * kernel_module.PROB_SCALE
    out["softmax e4m3 steps"] = e4m3_steps(probs[..., : heads * keys], want.to(FLOAT8_DTYPE))
    out["softmax tail"] = probs[..., heads * keys:].float().abs().max().item()
    out["softmax scores kept"] = float(torch.equal(scores, before))

    # the module: bf16, a 5-token caption (one sample masked to 3), x as float8 rows of its bf16 values
    layer_module.folded_attention_kernel_applies = lambda x, *args: x.dtype in HALF_DTYPES
    linears = [0]
    float8_linear = layer_module.float8_linear

    def counted(*args, **kwargs):
        linears[0] += 1
        return float8_linear(*args, **kwargs)

    layer_module.float8_linear = counted
    module = CrossAttention(128, heads)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x, y = torch.randn(3, 70, 128, generator=g), torch.randn(3, keys, 128, generator=g)
    mask = torch.ones(3, keys, dtype=torch.bool)
    mask[0, 3:] = False
    half = copy.deepcopy(module).bfloat16()
    xb, yb = x.bfloat16(), y.bfloat16()
    rows = quantize_rows_reference(xb)
    with torch.no_grad():
        module.fold_short_context = False
        exact = module(x, y, mask)
        bf16 = half(xb, yb, mask)
        got = half(xb, yb, mask, rows)  # the default: the first GEMM from e4m3 operands
        first_linears = linears[0]
        k, v = half.kv_linear(yb).chunk(2, dim=-1)
        context = layer_module.fold_context(k, v, half.q_linear, half.proj, heads, mask, kernel=True)
        got_e4m3 = layer_module.attend_folded(xb, context, rows, float8_probabilities=True)
    out["module float8 linears"] = float(first_linears)
    out["e4m3 probabilities float8 linears"] = float(linears[0] - first_linears)
    out["module float8 vs float32"] = relative(got, exact)
    out["e4m3 probabilities vs float32"] = relative(got_e4m3, exact)
    out["module bf16 kernel vs float32"] = relative(bf16, exact)
    # the same arithmetic in torch: e4m3 operands dequantized, the scores rounded to bf16, the probabilities
    # to bf16 (B in bf16, its output bias row) or to e4m3 times PROB_SCALE (B in e4m3, the bias added)
    a8, b8 = context.float8_operands()
    columns = heads * keys
    for e4m3, key in ((False, "module float8 vs torch float8"), (True, "e4m3 probabilities vs torch float8")):
        emulated = []
        for i in range(3):
            xs = rows.values[i].float() * rows.scale[i * 70:(i + 1) * 70]
            s = (xs @ (a8[i].weight.float() * a8[i].scale.t()).t()).bfloat16().float()[:, :columns]
            p = (s * context.scale + context.bias[i]).view(70, heads, keys).softmax(-1).view(70, columns)
            if e4m3:
                p8 = (p * kernel_module.PROB_SCALE).to(FLOAT8_DTYPE).float() / kernel_module.PROB_SCALE
                b = (b8[i].weight.float() * b8[i].scale.t()).t()[:columns]
                emulated.append(p8 @ b + b8[i].bias.float())
            else:
                emulated.append(p.bfloat16().float() @ context.b[i, :columns].float() + context.b[i, columns].float())
        out[key] = relative(got_e4m3 if e4m3 else got, torch.stack(emulated))
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({**cases(), **float8_cases()}))
