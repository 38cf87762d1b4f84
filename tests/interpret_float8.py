"""Run by tests/test_kernels.py in a child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter):
the float8 kernels (row quantize, with and without GELU; layer norm + modulation writing e4m3 rows) against
their torch references, and a tiny STDiT3 and Latte with float8 linears: with the kernels, with the same
quantization in torch, and on the plain torch path. Prints one JSON object."""

from __future__ import annotations

import json
import os

import torch
from support import kernel_test_models

from videosys.kernels import float8 as float8_module
from videosys.kernels import temporal_attention_reference
from videosys.kernels.float8 import Float8Rows, quantize_rows, quantize_rows_reference
from videosys.kernels.modulation import (
    add_layer_norm_modulate,
    apply_gate_and_add,
    apply_gate_and_add_float8,
    layer_norm_modulate,
    layer_norm_modulate_float8,
)
from videosys.models.layers import attention as attention_module
from videosys.models.layers import float8 as layers_float8
from videosys.models.layers import norms as norms_module
from videosys.models.layers.float8 import use_float8
from videosys.models.layers.folded_attention import use_folded_cross_attention
from videosys.models.opensora import stdit3 as stdit3_module


def e4m3_steps(got: Float8Rows, want: Float8Rows) -> float:
    """The largest difference of the e4m3 values in e4m3 steps at ``want``'s magnitude (a step is 1/8 of
    the value's power of two; below the normal range, the subnormal step 2^-9)."""
    a, b = got.values.float(), want.values.float()
    step = torch.maximum(torch.exp2(torch.floor(torch.log2(b.abs().clamp_min(1e-30)))) / 8,
                         torch.tensor(2.0**-9))
    return ((a - b).abs() / step).max().item()


def kernel_cases() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for shape in ((3, 5, 40), (4, 3, 1152), (2, 2, 4608)):  # rows of two tiles: 32 + 8, 1024 + 128, 4096 + 512
        c = shape[-1]
        for dtype in (torch.float16, torch.bfloat16):
            x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
            x[0, 0] = 0  # an all-zero row
            for gelu in (False, True):
                got, want = quantize_rows(x, gelu=gelu), quantize_rows_reference(x, gelu=gelu)
                key = f"quantize{'+gelu' if gelu else ''} {list(shape)} {str(dtype)[6:]}"
                out[key] = e4m3_steps(got, want)
                out[key + " scale"] = (got.scale / want.scale - 1).abs().max().item()
            table = (torch.randn(3 if shape[0] == 3 else 4, 6, c, generator=g) * 0.5).to(dtype)
            shift, scale = table.chunk(6, dim=1)[:2]
            got = layer_norm_modulate_float8(x, shift, scale, 1e-6)
            # against the rows of the half-precision kernel (interpret_norm_kernels.py checks those against
            # the torch path; the interpreter rounds float32 -> bf16 differently from the GPU)
            want = quantize_rows_reference(layer_norm_modulate(x, shift, scale, 1e-6))
            key = f"norm {list(shape)} {str(dtype)[6:]}"
            out[key] = e4m3_steps(got, want)
            out[key + " scale"] = (got.scale / want.scale - 1).abs().max().item()
            # after a residual add: the rows of the sum the kernel also returns
            total, got = add_layer_norm_modulate(x, torch.randn(*shape, generator=g).to(dtype), shift, scale, 1e-6,
                                                 float8=True)
            want = quantize_rows_reference(layer_norm_modulate(total, shift, scale, 1e-6))
            key = f"add+norm {list(shape)} {str(dtype)[6:]}"
            out[key] = e4m3_steps(got, want)
            out[key + " scale"] = (got.scale / want.scale - 1).abs().max().item()
            # the gate's residual update: the sum and product exactly the half-precision kernel's, its rows
            y, residual = (torch.randn(*shape, generator=g).to(dtype) for _ in range(2))
            total, product, got = apply_gate_and_add_float8(y, table[:, 2:3], residual, product=True)
            want_total, want_product = apply_gate_and_add(y, table[:, 2:3], residual)
            assert torch.equal(total, want_total) and torch.equal(product, want_product)
            assert apply_gate_and_add_float8(y, table[:, 2:3], residual, product=False)[1] is None
            want = quantize_rows_reference(want_total)
            key = f"gate+add {list(shape)} {str(dtype)[6:]}"
            out[key] = e4m3_steps(got, want)
            out[key + " scale"] = (got.scale / want.scale - 1).abs().max().item()
    return out


def torch_float8_norm(x, shift, scale, eps, weight=None, bias=None):
    """The half-precision norm kernel's rows quantized by torch (the norm's own float32 summation order is
    interpret_norm_kernels.py's subject; here a rounding flip would move a value by an e4m3 step)."""
    return quantize_rows_reference(layer_norm_modulate(x, shift, scale, eps, weight, bias))


def torch_float8_add_norm(x, addend, shift, scale, eps, weight=None, bias=None, *, float8=False):
    """:func:`torch_float8_norm` after the residual add, as ``add_layer_norm_modulate`` returns them."""
    total = x + addend
    norm = torch_float8_norm if float8 else layer_norm_modulate
    return total, norm(total, shift, scale, eps, weight, bias)


def torch_float8_gate(y, gate, residual, *, product):
    """The half-precision gate kernel's sum and product, the sum's rows quantized by torch."""
    total, kept = apply_gate_and_add(y, gate, residual)
    return total, kept if product else None, quantize_rows_reference(total)


def model_cases() -> dict[str, float]:
    """The tiny STDiT3 and Latte (float32: the kernels' rounding to the model dtype is then exact) on the
    torch path, with float8 linears through the kernels, and with the same quantization done by torch."""
    out: dict[str, float] = {}
    norms_module.modulation_kernels_apply = lambda x, *others: x.is_contiguous()
    norms_module.float8_applies = lambda x: True
    # the frame-major paths (their qkv GEMMs read float8 rows), with the attention itself in torch: its kernel
    # has its own interpreter test, and run here it would take most of a minute
    for module in (stdit3_module, attention_module):
        module.fused_temporal_attention_applies = lambda *args: True
        module.fused_temporal_attention = temporal_attention_reference
    models = kernel_test_models()
    # fewer token rows than the other interpreter scripts use (the interpreter runs each program in Python):
    # Latte 2 frames of 4 x 4 latents (2 x 2 patches), STDiT3 2 frames of 2 x 4 (1 x 2 patches)
    g = torch.Generator().manual_seed(3)
    models["latte"][1]["hidden_states"] = torch.randn(2, 4, 2, 4, 4, generator=g)
    models["stdit3"][1]["x"] = torch.randn(2, 4, 2, 2, 4, generator=g)
    # the tiny STDiT3's 6-token caption folds into its cross-attention's projections (no q_linear, so no
    # float8 rows from the gate); unfolded, q_linear reads the rows its self-attention's gate kernel writes
    models["stdit3 unfolded"] = models["stdit3"]
    for name, (model, inputs) in models.items():
        use_folded_cross_attention(model, not name.endswith("unfolded"))
        calls = {"norm": 0, "gate": 0, "quantize": 0, "linear": 0}

        def counted(kind, fn, calls=calls):
            def call(*args, **kwargs):
                calls[kind] += 1
                return fn(*args, **kwargs)
            return call

        with torch.no_grad():
            use_float8(model, False)
            plain = model(**inputs)
            assert use_float8(model) == 4
            norms_module.layer_norm_modulate_float8 = counted("norm", layer_norm_modulate_float8)
            norms_module.add_layer_norm_modulate = counted("norm", add_layer_norm_modulate)
            norms_module.apply_gate_and_add_float8 = counted("gate", apply_gate_and_add_float8)
            layers_float8.quantize_rows = counted("quantize", quantize_rows)
            layers_float8.float8_linear = counted("linear", float8_module.float8_linear)
            kernels = model(**inputs)
            counts = dict(calls)
            norms_module.layer_norm_modulate_float8 = torch_float8_norm
            norms_module.add_layer_norm_modulate = torch_float8_add_norm
            norms_module.apply_gate_and_add_float8 = torch_float8_gate
            layers_float8.quantize_rows = quantize_rows_reference
            emulated = model(**inputs)
        size = plain.float().norm().item()
        out.update({
            f"{name} float8 vs torch path": (kernels - plain).norm().item() / size,
            f"{name} float8 kernels vs torch float8": (kernels - emulated).norm().item() / size,
            **{f"{name} {kind} calls": float(n) for kind, n in counts.items()},
        })
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({**kernel_cases(), **model_cases()}))
