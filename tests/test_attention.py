"""Attention backend choice and the Attention module against a hand-written softmax attention."""

from __future__ import annotations

import math

import pytest
import torch

from videosys.models.layers import attention as attn_mod
from videosys.models.layers.attention import Attention, scaled_dot_product, select_backend


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_backend_is_sdpa_on_cpu() -> None:
    q = torch.randn(1, 2, 4, 8)
    assert select_backend(q) == "sdpa"
    assert select_backend(q.half()) == "sdpa"
    assert select_backend(q, torch.ones(1, 1, 1, 4, dtype=torch.bool)) == "sdpa"


def test_backend_flash_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flash rules, with flash-attn faked as importable and a CUDA-looking query."""

    class FakeQ:
        def __init__(self, dtype: torch.dtype, head_dim: int, cuda: bool = True) -> None:
            self.dtype, self.shape, self.is_cuda = dtype, (1, 2, 4, head_dim), cuda

    monkeypatch.setattr(attn_mod, "flash_available", lambda: True)
    assert select_backend(FakeQ(torch.float16, 64)) == "flash"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.bfloat16, 256)) == "flash"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float32, 64)) == "sdpa"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float16, 72)) == "flash"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float16, 68)) == "sdpa"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float16, 264)) == "sdpa"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float16, 64, cuda=False)) == "sdpa"  # type: ignore[arg-type]
    assert select_backend(FakeQ(torch.float16, 64), torch.ones(1, dtype=torch.bool)) == "sdpa"  # type: ignore[arg-type]


def test_scaled_dot_product_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(scaled_dot_product(q, k, v), _reference(q, k, v, None), atol=1e-5, rtol=1e-5)
    mask = torch.rand(2, 1, 1, 5, generator=g) > 0.4
    mask[..., 0] = True
    torch.testing.assert_close(scaled_dot_product(q, k, v, mask), _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product(q, k, v, mask.float())


def _module_reference(m: Attention, x: torch.Tensor, ctx: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], m.heads, m.dim_head).transpose(1, 2)

    q, k, v = heads(m.to_q(x)), heads(m.to_k(ctx)), heads(m.to_v(ctx))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = _reference(q, k, v, mask).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return m.to_out[0](out)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_module_matches_reference(cross: bool, masked: bool) -> None:
    torch.manual_seed(0)
    m = Attention(16, heads=2, dim_head=8, cross_attention_dim=12 if cross else None, bias=True)
    assert sorted(k for k, _ in m.named_parameters()) == [
        "to_k.bias", "to_k.weight", "to_out.0.bias", "to_out.0.weight",
        "to_q.bias", "to_q.weight", "to_v.bias", "to_v.weight",
    ]
    x = torch.randn(2, 6, 16)
    ctx = torch.randn(2, 7, 12) if cross else x
    key_mask = None
    if masked:
        key_mask = torch.ones(2, ctx.shape[1], dtype=torch.bool)
        key_mask[1, 3:] = False
        key_mask[0, 0] = False
    with torch.no_grad():
        out = m(x, ctx if cross else None, key_mask)
        ref = _module_reference(m, x, ctx, key_mask)
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_attention_bias_flag_and_bad_mask() -> None:
    m = Attention(16, heads=2, dim_head=8, bias=False)
    assert m.to_q.bias is None and m.to_out[0].bias is not None
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.randn(2, 4, 16), attention_mask=torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("masked", [False, True])
def test_short_sequence_matmul_path_matches_sdpa(masked: bool) -> None:
    """The two-matmul path that CUDA uses for short (temporal) sequences: same values as SDPA, a fully
    masked query row gives zeros instead of NaN, and the output keeps the value dtype."""
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(3, 2, 3, 15, 8, generator=g).unbind(0)
    mask = None
    if masked:
        mask = torch.rand(2, 1, 15, 15, generator=g) > 0.3
        mask[0, 0, 2] = False  # one query row with no key
    out = attn_mod.matmul_attention(q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if masked:
        assert torch.all(out[0, :, 2] == 0)
        out, ref = out.clone(), ref.clone()
        out[0, :, 2] = ref[0, :, 2] = 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert attn_mod.matmul_attention(q.half(), k.half(), v.half()).dtype == torch.float16


def test_backend_choice_compiles_in_one_graph() -> None:
    """``torch.compile`` traces the backend choice (flash-attn's availability included) without a graph break:
    compiled block pieces stay one graph each (an import attempt inside the trace once split every one)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    torch._dynamo.reset()
    compiled = torch.compile(attn_mod.scaled_dot_product, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attn_mod.scaled_dot_product(q, k, v))
    # on a CUDA query the availability is asked; here it is asked directly, as the CPU has no CUDA query
    probe = torch.compile(lambda x: x * 2 if attn_mod.flash_available() else x + 1, backend="eager", fullgraph=True)
    want = q * 2 if attn_mod.flash_available() else q + 1
    torch.testing.assert_close(probe(q), want)


def test_over_frames_attends_over_the_frames_of_each_position() -> None:
    """Frame-major ``[B, T, S, C]`` tokens: position ``s`` of video ``b`` attends over its ``T`` frames, as
    ``forward`` on the ``[B*S, T, C]`` regrouping does (the CPU path; the GPU kernel: tests/test_kernels.py)."""
    torch.manual_seed(0)
    attn = Attention(32, 4, 8, bias=True).eval()
    x = torch.randn(2, 5, 3, 32)
    with torch.no_grad():
        got = attn.over_frames(x)
        want = attn(x.transpose(1, 2).reshape(6, 5, 32)).reshape(2, 3, 5, 32).transpose(1, 2)
        moved = x.clone()
        moved[1, :, 2] += 1.0  # one position of one video: only its own frames may change
        changed = (attn.over_frames(moved) - got).abs().amax(dim=-1) > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert changed[1, :, 2].all() and changed.sum() == 5


def test_latte_block_refuses_frames_that_do_not_match_its_tokens() -> None:
    from videosys.models.layers.blocks import LatteBlock

    block = LatteBlock(32, 4, 8).eval()
    x, t_mod = torch.randn(6, 3, 32), torch.randn(2, 6 * 32)
    with torch.no_grad():
        assert block(x, t_mod, kind="temporal", frames=3).shape == (6, 3, 32)
        with pytest.raises(ValueError, match="do not hold 2 videos of 4 frames"):
            block(x, t_mod, kind="temporal", frames=4)
