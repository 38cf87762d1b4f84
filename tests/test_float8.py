"""Float8 linears (videosys.kernels.float8, videosys.models.layers.float8): the kernels against the torch
quantization in Triton's CPU interpreter and a tiny STDiT3 through them; the types' checks; the switch and
its e4m3 weight copies; the engine, config and CLI options."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from support import run_in_interpreter
from torch import nn

from videosys.kernels.float8 import (
    FLOAT8_DTYPE,
    FLOAT8_MAX,
    Float8Rows,
    Float8Weight,
    float8_applies,
    float8_linear,
    float8_unavailable,
    quantize_rows_reference,
)
from videosys.models.layers.float8 import (
    WEIGHT_ATTRIBUTE,
    linear,
    mlp_gelu_tanh,
    use_float8,
)
from videosys.testing.tiny_stdit3 import make_stdit3


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_float8_kernels_match_the_torch_quantization_in_the_interpreter() -> None:
    errors = run_in_interpreter("interpret_float8.py")
    # per block (2 spatial, 2 temporal): the two norms write e4m3 rows, the MLP's GELU quantizes fc2's input;
    # linears: an STDiT3 spatial block's q, k, v, fc1, fc2 (5), a temporal block's one qkv, fc1, fc2 (3);
    # unfolded (its caption attended through q_linear) also every STDiT3 block's cross-attention q_linear,
    # fed by its self-attention's gate kernel (folded, no q and no float8 rows); every Latte block's stacked
    # qkv (its self-attentions are short: the fused path), fc1, fc2
    linears = {"stdit3": 2 * 5 + 2 * 3, "stdit3 unfolded": 2 * 5 + 2 * 3 + 4, "latte": 4 * 3}
    gates = {"stdit3": 0, "stdit3 unfolded": 4, "latte": 0}
    for model in ("stdit3", "stdit3 unfolded", "latte"):
        assert errors.pop(f"{model} norm calls") == 8
        assert errors.pop(f"{model} gate calls") == gates[model]
        assert errors.pop(f"{model} quantize calls") == 4
        assert errors.pop(f"{model} linear calls") == linears[model]
        # the kernels quantize exactly as the torch reference does (the same model with torch's quantization)
        assert errors.pop(f"{model} float8 kernels vs torch float8") < 1e-6
        # ...and float8 changes the numbers, by a few percent (relative to the output's norm)
        assert 0.002 < errors.pop(f"{model} float8 vs torch path") < 0.1
    # 3 shapes x 2 dtypes x (quantize, GELU + quantize, norm, add + norm, gate + add) x (values, scale)
    assert len(errors) == 3 * 2 * 5 * 2, sorted(errors)
    for key, value in errors.items():
        if key.endswith("scale"):  # a row's scale: its amax, which the GELU may round one bf16 step apart
            assert value <= (0.01 if "gelu" in key else 1e-6), (key, value)
        else:  # e4m3 values: at most one step (a tie, the GELU's or the norm's float32 arithmetic)
            assert value <= 1.0, (key, value)


def test_quantize_reference_rows_scales_and_zero_rows() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [1e4, 3.0, -1e-3]], dtype=torch.bfloat16)
    q = quantize_rows_reference(x)
    assert q.values.dtype == FLOAT8_DTYPE and q.scale.shape == (3, 1) and q.dtype == torch.bfloat16
    assert torch.equal(q.values[0].float(), torch.zeros(3))  # an all-zero row stays zero, no NaN
    assert q.values.float().abs().amax(1)[1:].tolist() == [FLOAT8_MAX, FLOAT8_MAX]  # each row's max -> 448
    assert torch.allclose(q.dequantize().float()[1], x.float()[1], rtol=2**-4)
    gelu = quantize_rows_reference(x, gelu=True).dequantize().float()
    want = torch.nn.functional.gelu(x.float(), approximate="tanh")
    assert torch.allclose(gelu, want, rtol=2**-3, atol=1e-3)


def test_float8_types_check_their_arguments() -> None:
    values = torch.zeros(2, 3, 8, dtype=FLOAT8_DTYPE)
    with pytest.raises(ValueError, match="values must be"):
        Float8Rows(values.float(), torch.ones(6, 1), torch.bfloat16)
    with pytest.raises(ValueError, match=r"scale must be float32 \[6, 1\]"):
        Float8Rows(values, torch.ones(3, 1), torch.bfloat16)
    rows = Float8Rows(values, torch.ones(6, 1), torch.bfloat16)
    assert rows.reshape(6, 8).shape == (6, 8) and not rows.requires_grad and not rows.is_cuda
    with pytest.raises(ValueError, match="keeping its rows"):
        rows.reshape(2, 24)
    weight = Float8Weight.from_linear(nn.Linear(4, 5))
    with pytest.raises(ValueError, match="input has 8 channels, the weight takes 4"):
        float8_linear(rows, weight)
    assert not float8_applies(torch.zeros(2))  # the CPU: never


def test_float8_linear_and_mlp_follow_the_layers() -> None:
    """From float8 rows the linears compute the layer's function within e4m3 precision; a part of the output
    channels (the q rows of a qkv) is the same slice of the whole."""
    g = torch.Generator().manual_seed(0)
    fc1, fc2 = nn.Linear(64, 96), nn.Linear(96, 64)
    with torch.no_grad():
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x = torch.randn(5, 7, 64, generator=g)
    rows = quantize_rows_reference(x)
    with pytest.raises(RuntimeError, match="call use_float8 after loading"):
        linear(fc1, rows)
    for layer in (fc1, fc2):
        setattr(layer, WEIGHT_ATTRIBUTE, Float8Weight.from_linear(layer))
    with torch.no_grad():
        want, got = fc1(x), linear(fc1, rows)
        assert got.shape == want.shape and got.dtype == x.dtype
        assert ((got - want).norm() / want.norm()).item() < 0.06
        assert torch.equal(linear(fc1, rows, slice(32, 64)), got[..., 32:64])
        assert torch.equal(linear(fc1, x, slice(32, 64)), want[..., 32:64])  # the plain path takes parts too
        want = fc2(torch.nn.functional.gelu(fc1(x), approximate="tanh"))
        assert torch.equal(mlp_gelu_tanh(x, fc1, fc2), want)
    import videosys.models.layers.float8 as layers_float8

    original = layers_float8.quantize_rows
    layers_float8.quantize_rows = quantize_rows_reference  # the kernel's torch definition (no GPU here)
    try:
        with torch.no_grad():
            got = mlp_gelu_tanh(rows, fc1, fc2)
    finally:
        layers_float8.quantize_rows = original
    assert ((got - want).norm() / want.norm()).item() < 0.08


def test_use_float8_makes_and_drops_the_weight_copies() -> None:
    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    keys = set(model.state_dict())
    assert not any(getattr(m, "float8", False) for m in model.modules())  # off by default
    assert use_float8(model) == 4  # every STDiT3 block (2 spatial, 2 temporal)
    for block in (*model.spatial_blocks, *model.temporal_blocks):
        assert block.float8
        for layer in (block.attn.qkv, block.mlp.fc1, block.mlp.fc2):
            copy = getattr(layer, WEIGHT_ATTRIBUTE)
            assert copy.weight.dtype == FLOAT8_DTYPE and copy.weight.shape == layer.weight.shape
            assert copy.scale.shape == (1, layer.out_features)
    assert set(model.state_dict()) == keys  # the copies are not weights: checkpoints are unchanged
    assert use_float8(model, False) == 4
    assert not any(hasattr(m, WEIGHT_ATTRIBUTE) for m in model.modules())
    assert not any(getattr(m, "float8", False) for m in model.modules())


def test_float8_blocks_run_the_torch_path_where_float8_does_not_apply() -> None:
    """On the CPU the switch changes nothing: the norm kernels (and so the float8 rows) apply on CUDA only."""
    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 4, 3, 4, 4, generator=g), torch.tensor([977.3, 40.0]),
              torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.bool))
    with torch.no_grad():
        plain = model(*inputs)
        use_float8(model)
        assert torch.equal(model(*inputs), plain)


@pytest.mark.parametrize("model", ["opensora", "latte"])
def test_engine_float8_reaches_the_loaded_denoiser(model: str, request: pytest.FixtureRequest,
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``float8=True`` switches every block of the loaded denoiser where float8 can run (here a stand-in
    for a Hopper GPU: the CPU pipeline with the availability check answering yes); where it cannot, the
    engine says why and makes no e4m3 copies."""
    from videosys import VideoSysEngine
    from videosys.kernels import float8 as float8_module

    weights = request.getfixturevalue(f"tiny_{model}_dir")

    def blocks(**kwargs: object) -> list[bool]:
        pipeline = VideoSysEngine(model, weights=weights, device="cpu", progress=False, **kwargs).pipeline_spec().build()
        return [m.float8 for m in pipeline.transformer.modules() if hasattr(m, "float8_linears")]

    assert blocks() and not any(blocks())
    caplog.clear()
    off = blocks(float8=True)  # the CPU: float8 cannot run
    assert off and not any(off)
    assert "float8 linears need a CUDA GPU (the device is cpu); the denoiser runs unchanged" in caplog.text
    monkeypatch.setattr(float8_module, "float8_unavailable", lambda device: None)
    on = blocks(float8=True)
    assert on and all(on)
    caplog.clear()
    blocks(float8=True, fused_kernels=False)
    assert "only in eager mode with the fused kernels on" in caplog.text


def test_float8_unavailable_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from videosys.kernels import float8 as float8_module

    assert "need a CUDA GPU" in float8_unavailable(torch.device("cpu"))
    monkeypatch.setattr(float8_module, "_capability", lambda index: (8, 0))
    assert "compute capability 8.9+ (Ada, Hopper), this GPU has 8.0" in float8_unavailable(torch.device("cuda", 0))
    monkeypatch.setattr(float8_module, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(float8_module, "triton_available", lambda: False)
    assert "need Triton" in float8_unavailable(torch.device("cuda", 0))
    monkeypatch.setattr(float8_module, "triton_available", lambda: True)
    assert float8_unavailable(torch.device("cuda", 0)) is None
