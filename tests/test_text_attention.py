"""The text attention kernel (videosys.kernels.text_attention): where it applies, its argument checks, and
(in Triton's CPU interpreter, when Triton is installed) its outputs against its torch reference, torch's
attention and, inside whole STDiT3 and Latte forwards, the torch path."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
from support import run_in_interpreter

from videosys.kernels import text_attention as kernel_module
from videosys.kernels.text_attention import (
    MAX_KEYS,
    MIN_QUERIES,
    text_attention,
    text_attention_applies,
    text_attention_reference,
)


def fake(shape: tuple[int, ...], dtype: torch.dtype = torch.bfloat16, cuda: bool = True,
         strides: tuple[int, ...] | None = None) -> types.SimpleNamespace:
    """What the check reads of a tensor, without a GPU."""
    strides = strides or tuple(int(torch.tensor(shape[i + 1:]).prod()) for i in range(len(shape)))
    return types.SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=torch.Size(shape), ndim=len(shape),
                                 requires_grad=False, stride=lambda i=None: strides if i is None else strides[i])


def test_applies_only_where_the_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_module, "triton_available", lambda: True)
    q, kv = fake((2, 16, 23850, 72)), fake((2, 16, 12, 72))
    assert text_attention_applies(q, kv, kv)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    assert text_attention_applies(q, kv, kv, mask)
    assert text_attention_applies(q, kv, kv, mask[:, 0, 0])
    assert not text_attention_applies(q, kv, kv, mask.float())  # an additive mask
    assert not text_attention_applies(q, kv, kv, torch.ones(2, 1, 23850, 12, dtype=torch.bool))  # per query
    long_kv = fake((2, 16, MAX_KEYS + 1, 72))
    assert not text_attention_applies(q, long_kv, long_kv)  # long key sequences keep torch's kernels
    few_q = fake((2, 16, MIN_QUERIES - 1, 72))
    assert not text_attention_applies(few_q, kv, kv)
    assert not text_attention_applies(fake((2, 16, 23850, 72), torch.float32), fake((2, 16, 12, 72), torch.float32),
                                      fake((2, 16, 12, 72), torch.float32))
    assert not text_attention_applies(fake((2, 16, 23850, 72), cuda=False), kv, kv)
    strided = fake((2, 16, 23850, 72), strides=(1, 2, 3, 4))
    assert not text_attention_applies(strided, kv, kv)
    assert not text_attention_applies(q, fake((1, 16, 12, 72)), fake((1, 16, 12, 72)))  # batch mismatch
    monkeypatch.setattr(kernel_module, "triton_available", lambda: False)
    assert not text_attention_applies(q, kv, kv)


def test_bad_arguments_are_named() -> None:
    q, k = torch.randn(1, 2, 70, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"q must be \[B, H, L_q, D\] and k, v \[B, H, L_k, D\] alike"):
        text_attention(q, k, torch.randn(1, 2, 6, 8))
    with pytest.raises(ValueError, match="contiguous channels"):
        text_attention(q.transpose(-1, -2).contiguous().transpose(-1, -2), k, k)
    with pytest.raises(ValueError, match="boolean key mask"):
        text_attention(q, k, k, torch.ones(1, 5))
    with pytest.raises(ValueError, match="block_n must be a power of two of at least 16"):
        text_attention(q, k, k, block_n=8)
    with pytest.raises(ValueError, match="tiles_per_program and num_stages must be positive"):
        text_attention(q, k, k, tiles_per_program=0)
    with pytest.raises(ValueError, match="at least one key"):
        text_attention(q, k[:, :, :0], k[:, :, :0])


def test_reference_is_torch_attention_with_zeros_for_fully_masked_queries() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True, False, True, True, False, True, True, True, False, True], [False] * 10])
    got = text_attention_reference(q, k, v, mask[:, None, None, :])
    want = torch.nn.functional.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=mask[:1, None, None])
    torch.testing.assert_close(got[:1], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernel_matches_reference_in_the_interpreter() -> None:
    errors = run_in_interpreter("interpret_text_attention.py")
    # every cross-attention of the tiny models ran the kernel: STDiT3's 2 spatial + 2 temporal blocks,
    # Latte's 2 spatial blocks (its temporal blocks attend to no caption)
    assert errors.pop("stdit3 kernel calls") == 4
    assert errors.pop("latte kernel calls") == 2
    assert errors.pop("stdit3") < 1e-5 and errors.pop("latte") < 1e-5
    empty = {k: errors.pop(k) for k in list(errors) if k.endswith("empty sample abs max")}
    assert len(empty) == 2 * 6 and max(empty.values()) == 0.0  # a sample with no valid key: zeros
    fp32 = {k: v for k, v in errors.items() if "float32" in k.split(" vs ")[0]}
    # 4 shapes x 2 key blockings x (no mask, key mask: each against the reference and torch's attention;
    # a sample with no valid key, batch 2 only) + 2 other launches
    assert len(fp32) == 2 * (4 * 5 - 1) + 2 and max(fp32.values()) < 1e-5, fp32
    bf16 = {k: v for k, v in errors.items() if k not in fp32}
    # bf16 inputs: within a few bf16 steps of the reference and of torch's float32 attention (the
    # interpreter truncates float32 -> bf16 where the GPU rounds to nearest; GPU: scripts/bench_kernels.py)
    assert len(bf16) == 2 * (4 * 5 - 1) and max(bf16.values()) < 0.05, bf16
