"""RoPE's two forms: the complex multiply eager mode runs and the real form ``torch.compile`` traces agree,
and a compiled rotation holds no complex tensor (Inductor cannot fuse one)."""

from __future__ import annotations

import pytest
import torch

from videosys.models.layers.rope import RotaryEmbedding, apply_rotary, apply_rotary_real


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_form_matches_the_complex_one(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 15, 72, generator=g).to(dtype).transpose(1, 2)  # strided, as q/k reach it
    cos, sin = RotaryEmbedding(72).cos_sin(4)
    want = apply_rotary(x, cos, sin)
    got = apply_rotary_real(x, cos, sin)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:  # both round the same float32 values to bf16: at most one bf16 step apart
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6)


def test_compiled_rotation_traces_no_complex_tensor() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, _inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    x = torch.randn(2, 5, 15, 16)
    cos, sin = RotaryEmbedding(16).cos_sin(15)
    torch._dynamo.reset()
    got = torch.compile(apply_rotary, backend=record, fullgraph=True)(x, cos, sin)
    torch.testing.assert_close(got, apply_rotary(x, cos, sin), rtol=1e-6, atol=1e-6)
    assert len(graphs) == 1
    values = [n.meta.get("example_value") for n in graphs[0].graph.nodes]
    assert not any(isinstance(v, torch.Tensor) and v.is_complex() for v in values)
    assert not any("complex" in str(n.target) for n in graphs[0].graph.nodes)
