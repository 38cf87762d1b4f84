"""The fused kernels (videosys.kernels): the temporal attention's torch reference is the STDiT3 temporal
attention; each kernel matches its reference (in Triton's CPU interpreter, when Triton is installed: the
test extras install it on Linux x86-64), and whole STDiT3 and Latte forwards with the kernels match the
torch path; the switches that turn them off."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch
from support import run_in_interpreter

from videosys.kernels import (
    MAX_FRAMES,
    fused_temporal_attention,
    fused_temporal_attention_applies,
    temporal_attention_reference,
    use_fused_kernels,
)
from videosys.kernels import modulation as modulation_module
from videosys.kernels import rms_norm as rms_norm_module
from videosys.kernels import temporal_attention as kernel_module
from videosys.kernels.modulation import (
    apply_gate,
    layer_norm_modulate,
    modulation_kernels_apply,
)
from videosys.kernels.rms_norm import rms_norm_rows, rms_norm_rows_applies
from videosys.models.layers import attention as attention_module
from videosys.models.layers import norms as norms_module
from videosys.models.layers.rope import RotaryEmbedding
from videosys.models.opensora import stdit3 as stdit3_module
from videosys.models.opensora.stdit3 import SelfAttention
from videosys.testing.tiny_stdit3 import make_stdit3

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("qk_norm", [True, False])
def test_reference_is_the_stdit3_temporal_attention(qk_norm: bool) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(64, 4, qk_norm=qk_norm).eval()
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    b, t, s, c = 2, 7, 5, 64
    x = torch.randn(b, t, s, c)
    rope = RotaryEmbedding(16).cos_sin(t)
    with torch.no_grad():
        regrouped = x.transpose(1, 2).reshape(b * s, t, c)  # what the torch path attends over
        want = attn(regrouped, rope=rope).reshape(b, s, t, c).transpose(1, 2)
        weights = (attn.q_norm.weight, attn.k_norm.weight) if qk_norm else (None, None)
        got = attn.proj(temporal_attention_reference(attn.qkv(x), 4, *weights, rope))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_applies_only_where_the_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_bf16 = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, requires_grad=False)
    monkeypatch.setattr(kernel_module, "triton_available", lambda: True)
    assert fused_temporal_attention_applies(cuda_bf16, 15, 72)
    assert fused_temporal_attention_applies(cuda_bf16, MAX_FRAMES, 128)
    assert not fused_temporal_attention_applies(cuda_bf16, MAX_FRAMES + 1, 72)  # scores no longer in registers
    assert not fused_temporal_attention_applies(cuda_bf16, 1, 72)  # one frame: the torch path's shortcut
    assert not fused_temporal_attention_applies(cuda_bf16, 15, 130)
    assert not fused_temporal_attention_applies(cuda_bf16, 15, 71)  # RoPE pairs
    assert not fused_temporal_attention_applies(
        types.SimpleNamespace(is_cuda=True, dtype=torch.float32, requires_grad=False), 15, 72)
    assert not fused_temporal_attention_applies(torch.zeros(1, dtype=torch.bfloat16), 15, 72)  # CPU
    monkeypatch.setattr(kernel_module, "triton_available", lambda: False)
    assert not fused_temporal_attention_applies(cuda_bf16, 15, 72)


def test_bad_arguments_are_named() -> None:
    qkv = torch.randn(1, 4, 3, 3 * 2 * 8)
    with pytest.raises(ValueError, match=r"qkv must be \[B, T, S, 3 \* heads \* head_dim\]"):
        temporal_attention_reference(qkv, 5)
    with pytest.raises(ValueError, match=r"q_weight must be \[8\]"):
        temporal_attention_reference(qkv, 2, torch.ones(9))
    with pytest.raises(ValueError, match=r"rope tables must be \[frames, head_dim\] = \[4, 8\]"):
        temporal_attention_reference(qkv, 2, rope=RotaryEmbedding(8).cos_sin(5))
    with pytest.raises(ValueError, match=f"at most {MAX_FRAMES} frames"):
        fused_temporal_attention(torch.randn(1, MAX_FRAMES + 1, 1, 48), 2)
    with pytest.raises(ValueError, match="heads_per_program=3 must divide the 2 heads"):
        fused_temporal_attention(qkv, 2, heads_per_program=3)
    with pytest.raises(ValueError, match="channels must be contiguous"):
        fused_temporal_attention(qkv.transpose(1, 3).contiguous().transpose(1, 3), 2)


def test_use_fused_kernels_switches_every_module_to_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the kernels off, a model whose every check says "applies" never calls a kernel."""
    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    # every block holds a switch, the q and k norms of its attention, and its cross-attention (no folding on CUDA)
    assert use_fused_kernels(model, False) == 4 + 8 + 4
    assert not any(getattr(m, "fused_kernel", False) for m in model.modules())

    def no_kernel(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the kernel ran although the model's kernels are off")

    for module in (stdit3_module, attention_module):
        monkeypatch.setattr(module, "fused_temporal_attention_applies", lambda *args: True)
        monkeypatch.setattr(module, "fused_temporal_attention", no_kernel)
    monkeypatch.setattr(norms_module, "modulation_kernels_apply", lambda *args: True)
    monkeypatch.setattr(norms_module, "layer_norm_modulate", no_kernel)
    monkeypatch.setattr(norms_module, "apply_gate", no_kernel)
    monkeypatch.setattr(norms_module, "rms_norm_rows_applies", lambda *args: True)
    monkeypatch.setattr(norms_module, "rms_norm_rows", no_kernel)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model(torch.randn(2, 4, 3, 4, 4, generator=g), torch.tensor([977.3, 40.0]),
                    torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (2, 8, 3, 4, 4) and torch.isfinite(out).all()
    assert use_fused_kernels(model) == 16 and all(block.fused_kernel for block in model.temporal_blocks)
    with pytest.raises(AssertionError, match="the kernel ran"):
        model(torch.randn(2, 4, 3, 4, 4, generator=g), torch.tensor([977.3, 40.0]),
              torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernel_matches_reference_in_the_interpreter() -> None:
    errors = run_in_interpreter("interpret_temporal_kernel.py")
    assert errors.pop("model kernel calls") == 2  # both temporal blocks of the tiny STDiT3 ran the kernel
    assert errors.pop("model") < 1e-5
    # the tiny Latte's spatial (16 tokens) and temporal (4 frames) self-attentions, not its cross-attentions
    assert errors.pop("latte kernel calls") == 4
    assert errors.pop("latte") < 1e-5
    fp32 = {k: v for k, v in errors.items() if "float32 norm" in k}
    assert fp32 and max(fp32.values()) < 1e-5, fp32
    for key in (k for k in errors if "bfloat16" in k and "vs" not in k):
        # bf16: within a few bf16 steps of the reference, and about as far from the float32 computation as
        # the reference is. The interpreter truncates float32 -> bf16 where the GPU rounds to nearest, so its
        # rounding errors are up to twice the GPU's (the GPU comparison: scripts/bench_kernels.py).
        assert errors[key] < 0.05, key
        assert errors[key + " kernel vs float32"] <= 3 * errors[key + " reference vs float32"] + 2**-6, key


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_norm_kernels_match_the_torch_path_in_the_interpreter() -> None:
    errors = run_in_interpreter("interpret_norm_kernels.py")
    # every block of the tiny STDiT3 (4) and Latte (2 spatial + 2 temporal): 2 norms and 2 gates each;
    # STDiT3's q and k norms (the temporal blocks' too: their fused attention does not apply on the CPU)
    assert errors.pop("stdit3 kernel calls") == 16 + 8
    # with every output asked for (as a PAB run keeping them), the gates write the sum and the product
    assert errors.pop("stdit3 keeping outputs kernel calls") == 16 + 8
    assert errors.pop("latte kernel calls") == 16
    for model in ("stdit3", "stdit3 keeping outputs", "latte"):
        assert errors.pop(model) < 1e-5, model
    assert len(errors) == 4 * 3 * 8 + 3 * 3, sorted(errors)
    for key, ulps in errors.items():
        # in epsilons of the dtype: float32 norms differ in summation order only; the gate's product and sum
        # are the torch path's; fp16 rounds as the GPU does; the interpreter truncates float32 -> bf16
        # where the GPU rounds to nearest, up to one more bf16 step per rounding
        kind = key.split()[0]
        if "bfloat16" in key:
            limit = {"norm": 4.0, "add+norm": 4.0, "add+norm/sum": 1.0, "rms": 1.0, "gate": 1.0,
                     "gate+residual": 3.0, "gate+add": 3.0, "gate+add/product": 1.0}[kind]
        elif "float16" in key:
            limit = 1.0 if kind in ("norm", "add+norm", "rms") else 0.0
        else:
            limit = 8.0 if kind in ("norm", "add+norm", "rms") else 0.0
        assert ulps <= limit, (key, ulps)


def test_kernels_stand_aside_where_autograd_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels have no backward: with grad mode on and the tokens or a weight requiring a gradient, every
    check says no (the torch path runs); under no_grad / inference_mode, or for frozen tensors, yes."""
    for module in (kernel_module, modulation_module, rms_norm_module):
        monkeypatch.setattr(module, "triton_available", lambda: True)

    def tokens(requires_grad: bool) -> types.SimpleNamespace:  # what the checks read of CUDA bf16 tokens
        return types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(4, 72),
                                     requires_grad=requires_grad, is_contiguous=lambda: True)

    trained, frozen = torch.ones(72, requires_grad=True), torch.ones(72)
    checks = {
        "temporal attention": lambda x, w: fused_temporal_attention_applies(x, 15, 72, [w]),
        "modulation": lambda x, w: modulation_kernels_apply(x, w),
        "rms norm": lambda x, w: rms_norm_rows_applies(x, w),
    }
    for name, check in checks.items():
        assert check(tokens(False), frozen), name
        assert not check(tokens(True), frozen), name
        assert not check(tokens(False), trained), name
        with torch.no_grad():
            assert check(tokens(True), trained), name
        with torch.inference_mode():
            assert check(tokens(True), trained), name


def test_norm_modulate_keeps_the_torch_path_for_a_norm_with_weight_but_no_bias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_kernel(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(norms_module, "modulation_kernels_apply", lambda *args: True)
    monkeypatch.setattr(norms_module, "layer_norm_modulate", no_kernel)
    x = torch.randn(2, 3, 8)
    shift, scale = torch.randn(2, 2, 8).chunk(2, dim=1)
    norm = torch.nn.LayerNorm(8, bias=False)
    want = torch.addcmul(shift, norm(x), 1 + scale)
    torch.testing.assert_close(norms_module.norm_modulate(norm, x, shift, scale), want)
    with pytest.raises(AssertionError, match="the kernel ran"):
        norms_module.norm_modulate(torch.nn.LayerNorm(8), x, shift, scale)


def test_norm_kernels_refuse_bad_arguments() -> None:
    x = torch.randn(3, 4, 8)
    table = torch.randn(3, 6, 8)
    shift, scale, gate = table.chunk(6, dim=1)[:3]
    five = torch.randn(5, 2, 8).chunk(2, dim=1)
    with pytest.raises(ValueError, match="do not split into 5 modulation groups"):
        layer_norm_modulate(x, *five, 1e-6)
    with pytest.raises(ValueError, match="modulation rows must be"):
        apply_gate(x, torch.randn(3, 1, 7))
    with pytest.raises(ValueError, match="x must be contiguous"):
        layer_norm_modulate(x.transpose(0, 1), shift, scale, 1e-6)
    with pytest.raises(ValueError, match="weight and bias come together"):
        layer_norm_modulate(x, shift, scale, 1e-6, torch.ones(8), None)
    with pytest.raises(ValueError, match="residual must match y"):
        apply_gate(x, gate, x.half())
    with pytest.raises(ValueError, match="normalized_shape"):
        norms_module.norm_modulate(torch.nn.LayerNorm(4), x, shift, scale)
    with pytest.raises(ValueError, match="rows of 1 to 128 channels, got 129"):
        rms_norm_rows(torch.randn(2, 129), torch.ones(129), 1e-6)
    with pytest.raises(ValueError, match=r"weight must be \[8\]"):
        rms_norm_rows(x, torch.ones(7), 1e-6)


@pytest.mark.parametrize("model", ["latte", "opensora"])
def test_engine_switch_reaches_the_loaded_denoiser(model: str, request: pytest.FixtureRequest) -> None:
    """``VideoSysEngine(fused_kernels=False)`` turns every kernel switch of the loaded denoiser off; the
    default leaves them on (used only where a kernel applies: on CUDA with Triton)."""
    from videosys import VideoSysEngine

    weights = request.getfixturevalue(f"tiny_{model}_dir")

    def switches(**kwargs: object) -> list[bool]:
        spec = VideoSysEngine(model, weights=weights, device="cpu", progress=False, **kwargs).pipeline_spec()
        pipeline = spec.build()
        return [m.fused_kernel for m in pipeline.transformer.modules() if hasattr(m, "fused_kernel")]

    on, off = switches(), switches(fused_kernels=False)
    assert on and all(on)
    assert len(off) == len(on) and not any(off)


@pytest.mark.parametrize("command", [["generate", "x"], ["bench"]])
def test_cli_no_fused_kernels_float8_and_no_cuda_graphs(command: list[str]) -> None:
    from videosys.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(command).fused_kernels is True
    assert parser.parse_args([*command, "--no-fused-kernels"]).fused_kernels is False
    assert parser.parse_args(command).float8 is False
    assert parser.parse_args([*command, "--float8"]).float8 is True
    assert parser.parse_args(command).cuda_graphs is True
    assert parser.parse_args([*command, "--no-cuda-graphs"]).cuda_graphs is False


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gelu_tanh_forms(bias: bool) -> None:
    """The plain form is exactly the tanh GELU of the linear; the epilogue form (forced here: on the CPU
    ``_addmm_activation`` applies the exact GELU) keeps shapes and argument order, within the two GELUs'
    difference; without a bias there is no epilogue."""
    from videosys.models.layers.activations import linear_gelu_tanh

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24, bias=bias)
    x = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        want = torch.nn.functional.gelu(linear(x), approximate="tanh")
        assert torch.equal(linear_gelu_tanh(x, linear), want)  # CPU: the plain form
        fused = linear_gelu_tanh(x, linear, epilogue=True)
    assert fused.shape == (2, 3, 5, 24)
    torch.testing.assert_close(fused, want, rtol=0, atol=1e-3)
    if bias:
        assert not torch.equal(fused, want)  # the epilogue ran (exact GELU on the CPU)


def test_autograd_off_walks_the_parameters_only_when_grad_mode_is_on() -> None:
    from videosys.kernels.common import autograd_off

    def never_walked():
        raise AssertionError("the parameters were walked with grad mode off")
        yield  # a generator

    trainable = torch.nn.Linear(2, 2)
    x = torch.zeros(2)
    with torch.no_grad():
        assert autograd_off(x, params=never_walked())
    with torch.inference_mode():
        assert autograd_off(x, params=never_walked())
    assert not autograd_off(x, params=trainable.parameters())  # grad mode on, a parameter that wants grads
    assert not autograd_off(x.requires_grad_())
    assert autograd_off(torch.zeros(2), params=trainable.requires_grad_(False).parameters())
