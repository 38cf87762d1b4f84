"""Run by tests/test_kernels.py in a child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter):
the fused temporal attention kernel against its torch reference, and whole STDiT3 and Latte forwards with
the kernel against the torch path. Prints one JSON object of maximum absolute differences (and how many
times each model called the kernel)."""

from __future__ import annotations

import json
import os

import torch
from support import kernel_test_models

from videosys.kernels import fused_temporal_attention, temporal_attention_reference
from videosys.models.layers import attention as attention_module
from videosys.models.layers.rope import RotaryEmbedding
from videosys.models.opensora import stdit3 as stdit3_module


def kernel_cases() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    # (batch, frames, positions, heads, head_dim): 15 frames and head_dim 72 are Open-Sora's (not powers of 2)
    for b, t, s, h, d in ((2, 15, 3, 2, 72), (1, 2, 4, 3, 8), (2, 33, 2, 1, 16)):
        for dtype in (torch.float32, torch.bfloat16):
            # every norm / RoPE combination at Open-Sora's head size, both or neither at the others
            combos = ((True, True), (True, False), (False, True), (False, False)) if d == 72 else \
                ((True, True), (False, False))
            for norm, rope in combos:
                # a strided view: the q|k|v channels of a wider tensor (rows 3C + 8 apart)
                qkv = torch.randn(b, t, s, 3 * h * d + 8, generator=g)[..., 4:4 + 3 * h * d].to(dtype)
                qw = torch.rand(d, generator=g).to(dtype) + 0.5 if norm else None
                kw = torch.rand(d, generator=g).to(dtype) + 0.5 if norm else None
                tables = RotaryEmbedding(d).cos_sin(t) if rope else None
                got = fused_temporal_attention(qkv, h, qw, kw, tables)
                want = temporal_attention_reference(qkv, h, qw, kw, tables)
                assert got.shape == want.shape == (b, t, s, h * d) and got.dtype == dtype
                key = f"{b}x{t}x{s}x{h}x{d} {str(dtype)[6:]} norm={norm} rope={rope}"
                out[key] = (got.float() - want.float()).abs().max().item()
                if dtype != torch.float32:  # both against the float32 computation on the same inputs
                    exact = temporal_attention_reference(qkv.float(), h, None if qw is None else qw.float(),
                                                         None if kw is None else kw.float(), tables)
                    out[key + " kernel vs float32"] = (got.float() - exact).abs().max().item()
                    out[key + " reference vs float32"] = (want.float() - exact).abs().max().item()
    qkv = torch.randn(2, 15, 3, 3 * 4 * 8, generator=g)
    tables = RotaryEmbedding(8).cos_sin(15)
    weights = torch.rand(8, generator=g) + 0.5, torch.rand(8, generator=g) + 0.5
    want = temporal_attention_reference(qkv, 4, *weights, tables)
    for heads in (2, 4):  # several heads per program
        got = fused_temporal_attention(qkv, 4, *weights, tables, heads_per_program=heads)
        out[f"2x15x3x4x8 float32 norm=True rope=True, {heads} heads per program"] = (got - want).abs().max().item()
    return out


def with_kernel_forced(module, model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``model(**inputs)`` on the torch path, then with ``module``'s kernel check forced on (the CPU
    interpreter runs the kernel), and the number of kernel calls."""
    calls = []
    real_kernel = module.fused_temporal_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real_kernel(*args, **kwargs)

    with torch.no_grad():
        torch_path = model(**inputs)
        module.fused_temporal_attention_applies = lambda *args: True
        module.fused_temporal_attention = counted
        fused = model(**inputs)
    return torch_path, fused, len(calls)


def model_cases() -> dict[str, float]:
    models = kernel_test_models()
    stdit3, inputs = models["stdit3"]
    torch_path, fused, calls = with_kernel_forced(stdit3_module, stdit3, inputs)
    out = {"model": (fused - torch_path).abs().max().item(), "model kernel calls": float(calls)}
    latte, inputs = models["latte"]
    torch_path, fused, calls = with_kernel_forced(attention_module, latte, inputs)
    out.update({"latte": (fused - torch_path).abs().max().item(), "latte kernel calls": float(calls)})
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({**kernel_cases(), **model_cases()}))
