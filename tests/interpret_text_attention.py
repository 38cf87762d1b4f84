"""Run by tests/test_kernels.py in a child process with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter):
the text attention kernel against its torch reference and torch's attention, and whole STDiT3 and Latte
forwards with it against the torch path. Prints one JSON object of maximum absolute differences (and how
many times each model called the kernel)."""

from __future__ import annotations

import itertools
import json
import os

import torch
import torch.nn.functional as F
from support import kernel_test_models

from videosys.kernels import text_attention as kernel_module
from videosys.kernels.text_attention import text_attention, text_attention_reference
from videosys.models.layers import attention as attention_module


def kernel_cases() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    # (batch, heads, queries, keys, head_dim): 72 is Open-Sora's and Latte's (64 + 16 channel tiles); 40 keys
    # over two key blocks of 32; 130 queries over two query blocks of 128
    for b, h, lq, lk, d in ((2, 3, 130, 5, 72), (2, 2, 70, 40, 72), (1, 2, 64, 33, 8), (2, 1, 80, 17, 32)):
        for dtype in (torch.float32, torch.bfloat16):
            # q a strided view ([B, L, H, D] memory, as the q linear's output viewed per head); k and v
            # halves of one [B, L, 2, H, D] projection, as STDiT3's kv linear makes them
            q = torch.randn(b, lq, h, d, generator=g).to(dtype).transpose(1, 2)
            kv = torch.randn(b, lk, 2, h, d, generator=g).to(dtype).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
            masks = {"none": None, "keys": torch.rand(b, 1, 1, lk, generator=g) > 0.4}
            masks["keys"][..., 0] = True
            if b > 1:  # one sample with no valid key: zeros
                empty = masks["keys"].clone()
                empty[1] = False
                masks["empty sample"] = empty
            # block_n 16: the captions of more than 16 keys take the key loop (online softmax); 64: one block
            for (name, mask), block_n in itertools.product(masks.items(), (16, 64)):
                got = text_attention(q, k, v, mask, block_n=block_n, tiles_per_program=2)
                want = text_attention_reference(q, k, v, mask)
                assert got.shape == want.shape == (b, h, lq, d) and got.dtype == dtype
                assert got.transpose(1, 2).is_contiguous()  # the [B, L_q, H, D] memory order
                key = f"{b}x{h}x{lq}x{lk}x{d} {str(dtype)[6:]} mask={name} block_n={block_n}"
                out[key] = (got.float() - want.float()).abs().max().item()
                if name == "empty sample":
                    out[key + " empty sample abs max"] = got[1].float().abs().max().item()
                    continue
                # torch's attention on the same inputs, in float32
                sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
                out[key + " vs sdpa float32"] = (got.float() - sdpa).abs().max().item()
    q, k, v = (torch.randn(2, 2, 100, 72, generator=g) for _ in range(3))
    want = text_attention_reference(q, k, v)
    for block_m, tiles, stages, warps in ((16, 1, 1, 1), (128, 3, 3, 8)):  # other launches
        got = text_attention(q, k, v, block_m=block_m, tiles_per_program=tiles, num_stages=stages, num_warps=warps)
        out[f"launch {block_m} x {tiles} tiles, {stages} stages, {warps} warps float32"] = \
            (got - want).abs().max().item()
    return out


def model_cases() -> dict[str, float]:
    """Tiny STDiT3 and Latte forwards on the torch path and with the kernel forced on (their queries are
    fewer than the kernel's minimum and they run on the CPU)."""
    calls = []
    real_kernel = attention_module.text_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real_kernel(*args, **kwargs)

    out: dict[str, float] = {}
    for name, (model, inputs) in kernel_test_models().items():
        with torch.no_grad():
            torch_path = model(**inputs)
            attention_module.text_attention_applies = lambda *args: True
            attention_module.text_attention = counted
            try:
                fused = model(**inputs)
            finally:
                attention_module.text_attention_applies = kernel_module.text_attention_applies
                attention_module.text_attention = real_kernel
        out[name] = (fused - torch_path).abs().max().item()
        out[f"{name} kernel calls"] = float(len(calls))
        calls.clear()
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({**kernel_cases(), **model_cases()}))
