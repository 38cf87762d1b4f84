"""Run by tests/test_kernels.py in a child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter):
the layer-norm + modulation, gate and short-row RMS norm kernels against their torch references, and whole
STDiT3 and Latte forwards with these kernels against the torch path. Prints one JSON object: per case the largest difference
in units of the dtype's epsilon at the reference's magnitude (``ulps``), and for the models the largest
absolute difference and the number of kernel calls."""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from support import kernel_test_models

from videosys.kernels.modulation import (
    add_layer_norm_modulate,
    apply_gate,
    apply_gate_and_add,
    apply_gate_reference,
    layer_norm_modulate,
    layer_norm_modulate_reference,
)
from videosys.kernels.rms_norm import rms_norm_rows
from videosys.models.layers import norms as norms_module


def ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest ``|got - want|`` in epsilons of ``want``'s dtype at ``max(|want|, 1)``."""
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = want.float().abs().clamp_min(1.0) * torch.finfo(want.dtype).eps
    return ((got.float() - want.float()).abs() / scale).max().item()


def kernel_cases() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    # (token shape, groups): one group per leading index (STDiT3), groups of sequences (Latte), one token per
    # group, and Open-Sora's 1152 channels (not a power of two)
    for shape, groups in (((2, 6, 40), 2), ((6, 5, 40), 2), ((3, 7, 24), 3), ((4, 3, 1152), 2)):
        c = shape[-1]
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
            # shift / scale / gate: chunks of a [G, 6, C] table, as the blocks slice them (rows 6C apart)
            table = (torch.randn(groups, 6, c, generator=g) * 0.5).to(dtype)
            shift, scale, gate = table.chunk(6, dim=1)[:3]
            for affine in (False, True):
                w = (torch.rand(c, generator=g) + 0.5).to(dtype) if affine else None
                b = torch.randn(c, generator=g).to(dtype) if affine else None
                key = f"norm {list(shape)} G={groups} {str(dtype)[6:]} affine={affine}"
                out[key] = ulps(layer_norm_modulate(x, shift, scale, 1e-6, w, b),
                                layer_norm_modulate_reference(x, shift, scale, 1e-6, w, b))
            # a residual add first: the sum as torch adds, the norm of that sum as the plain kernel's cases
            addend = torch.randn(*shape, generator=g).to(dtype)
            total, normed = add_layer_norm_modulate(x, addend, shift, scale, 1e-6)
            out[f"add+norm/sum {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(total, x + addend)
            out[f"add+norm {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(
                normed, layer_norm_modulate_reference(total, shift, scale, 1e-6))
            y = torch.randn(*shape, generator=g).to(dtype)
            out[f"gate {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(apply_gate(y, gate),
                                                                          apply_gate_reference(y, gate))
            out[f"gate+residual {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(
                apply_gate(y, gate, x), apply_gate_reference(y, gate, x))
            total, product = apply_gate_and_add(y, gate, x)
            out[f"gate+add {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(total, apply_gate_reference(y, gate, x))
            out[f"gate+add/product {list(shape)} G={groups} {str(dtype)[6:]}"] = ulps(
                product, apply_gate_reference(y, gate))
    # qk-norm rows: Open-Sora's head_dim 72, the widest row taken (128), a single channel
    for shape in ((3, 5, 4, 72), (7, 128), (6, 1)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = (torch.randn(*shape, generator=g) * 3).to(dtype)
            w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
            out[f"rms {list(shape)} {str(dtype)[6:]}"] = ulps(rms_norm_rows(x, w, 1e-6),
                                                              F.rms_norm(x, (shape[-1],), w, 1e-6))
    return out


class KeepEverything:
    """A stand-in PAB run that computes every module and asks for every output (as a run keeps them), so
    STDiT3's gated modules take the kernel that writes the residual sum and the gated product."""

    def compute_or_broadcast(self, kind, block, fn, site=""):
        return fn()

    def add_or_broadcast(self, kind, block, residual, fn, site=""):
        total, output = fn(True)
        assert output is not None and output.shape == total.shape
        return total


def with_kernels_forced(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``model(**inputs)`` on the torch path, then with the modulation kernels' check forced on (the CPU
    interpreter runs them), and the number of kernel calls."""
    calls = []

    def counted(kernel):
        def call(*args, **kwargs):
            calls.append(1)
            return kernel(*args, **kwargs)
        return call

    names = ("modulation_kernels_apply", "layer_norm_modulate", "add_layer_norm_modulate", "apply_gate",
             "apply_gate_and_add", "rms_norm_rows_applies", "rms_norm_rows")
    saved = {name: getattr(norms_module, name) for name in names}
    with torch.no_grad():
        torch_path = model(**inputs)
        norms_module.modulation_kernels_apply = lambda x, *others: x.is_contiguous()
        norms_module.rms_norm_rows_applies = lambda x, *others: x.is_contiguous()
        for name in ("layer_norm_modulate", "add_layer_norm_modulate", "apply_gate", "apply_gate_and_add",
                     "rms_norm_rows"):
            setattr(norms_module, name, counted(saved[name]))
        try:
            fused = model(**inputs)
        finally:
            for name, value in saved.items():
                setattr(norms_module, name, value)
    return torch_path, fused, len(calls)


def model_cases() -> dict[str, float]:
    out = {}
    models = kernel_test_models(latte_norm_affine=True)
    stdit3, stdit3_inputs = models["stdit3"]
    models["stdit3 keeping outputs"] = (stdit3, {**stdit3_inputs, "pab": KeepEverything()})
    for name, (model, inputs) in models.items():
        torch_path, fused, calls = with_kernels_forced(model, inputs)
        out.update({name: (fused - torch_path).abs().max().item(), f"{name} kernel calls": float(calls)})
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({**kernel_cases(), **model_cases()}))
