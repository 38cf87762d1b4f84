"""The folded short-context cross-attention: where it applies, that it is the unfolded module's function
(fp32 to rounding; bf16 no less accurate), its masks, its bad input, its switch, and the models using it."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from support import run_in_interpreter

from videosys.models.layers.attention import Attention
from videosys.models.layers.folded_attention import (
    attend_folded,
    folded_cross_attention,
    folds,
    use_folded_cross_attention,
)
from videosys.models.opensora.stdit3 import CrossAttention
from videosys.testing.tiny_stdit3 import make_stdit3


def _both(module: torch.nn.Module, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's output folded (its default) and unfolded."""
    with torch.no_grad():
        folded = module(*args)
        use_folded_cross_attention(module, False)
        unfolded = module(*args)
        use_folded_cross_attention(module, True)
    return folded, unfolded


def _spy(monkeypatch: pytest.MonkeyPatch, module: object) -> list[int]:
    """Count the folded calls made through ``module``'s imported ``attend_module_folded`` (STDiT3, Attention)."""
    calls: list[int] = []
    original = module.attend_module_folded  # type: ignore[attr-defined]

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "attend_module_folded", counted)
    return calls


def test_folds_on_the_cpu_where_the_thin_gemms_are_no_wider_than_the_projections() -> None:
    x = torch.empty(1, 1152)
    assert folds(x, 16, 72, 1152)  # Open-Sora / Latte: captions of up to 72 tokens on the CPU
    assert not folds(x, 16, 73, 1152)
    assert not folds(x, 16, 0, 1152)
    assert folds(torch.empty(2, 64), 4, 16, 64) and not folds(torch.empty(2, 64), 4, 17, 64)


def test_the_gpu_path_applies_to_short_captions_of_half_cuda_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path's rules (CUDA faked; the GPU runs are in docs/benchmarks.md): fp16 / bf16, Triton,
    ``heads * keys`` at most the width, no autograd recording; on a CUDA tensor it is where :func:`folds`
    folds. Rows of scores are padded past the bias column to 64."""
    from videosys.kernels import folded_attention as kernel

    class FakeCuda:
        def __init__(self, dtype: torch.dtype = torch.bfloat16, width: int = 1152) -> None:
            self.dtype, self.shape, self.is_cuda, self.requires_grad = dtype, (2, 10, width), True, False

    monkeypatch.setattr(kernel, "triton_available", lambda: True)
    applies = kernel.folded_attention_kernel_applies
    assert applies(FakeCuda(), 16, 12) and applies(FakeCuda(torch.float16), 16, 72)
    assert not applies(FakeCuda(), 16, 73) and not applies(FakeCuda(), 16, 0)
    assert not applies(FakeCuda(torch.float32), 16, 12)
    with torch.enable_grad():
        assert not applies(FakeCuda(), 16, 12, [torch.zeros(1, requires_grad=True)])
    assert folds(FakeCuda(), 16, 33) and not folds(FakeCuda(), 16, 80)  # type: ignore[arg-type]
    assert not folds(FakeCuda(), 16, 33, kernels=False)  # type: ignore[arg-type]  # --no-fused-kernels
    assert folds(torch.empty(1, 1152), 16, 33, kernels=False)  # the CPU folds with torch ops regardless
    monkeypatch.setattr(kernel, "triton_available", lambda: False)
    assert not folds(FakeCuda(), 16, 33)  # type: ignore[arg-type]
    assert kernel.folded_row_width(16, 33) == 576 and kernel.folded_row_width(16, 4) == 128
    assert kernel.folded_row_width(1, 63) == 64


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_kernel_matches_the_unfolded_module_in_the_interpreter() -> None:
    errors = run_in_interpreter("interpret_folded_attention.py")
    for name in ("stdit3", "stdit3 no mask", "attention", "attention no biases"):
        for dtype, bound in (("float16", 2e-3), ("bfloat16", 2e-2)):
            key = f"{name} {dtype}"
            assert errors[key + " kernel calls"] == 1, key
            # as close to the float32 module as the unfolded module in that dtype is (the interpreter
            # truncates float32 -> bf16 where the GPU rounds, so up to twice its rounding error there)
            assert errors[key + " kernel"] < bound, key
            assert errors[key + " kernel"] <= 2 * errors[key + " unfolded"], key
    # --float8: the softmax writes e4m3 probabilities (times PROB_SCALE) as torch rounds them, zeros after
    # them, and leaves the scores; STDiT3's module with float8 rows runs its first GEMM per group from e4m3
    # operands (3 groups), with float8_probabilities also the second, each as the same arithmetic in torch
    # does, a few percent from float32
    assert errors["softmax e4m3 steps"] <= 1 and errors["softmax tail"] == 0 and errors["softmax scores kept"] == 1
    assert errors["module float8 linears"] == 3 and errors["e4m3 probabilities float8 linears"] == 6
    for variant in ("module float8", "e4m3 probabilities"):
        assert errors[f"{variant} vs torch float8"] < 0.01, variant
        assert errors["module bf16 kernel vs float32"] < errors[f"{variant} vs float32"] < 0.1, variant


def test_softmax_kernel_names_bad_arguments() -> None:
    from videosys.kernels.folded_attention import head_softmax_rows

    scores, bias = torch.zeros(1, 4, 64, dtype=torch.float16), torch.zeros(1, 48)
    with pytest.raises(ValueError, match="contiguous"):
        head_softmax_rows(scores.transpose(1, 2), bias, 4, 12, 1.0)
    with pytest.raises(ValueError, match="bias column"):
        head_softmax_rows(scores, torch.zeros(1, 64), 4, 16, 1.0)
    with pytest.raises(ValueError, match="float32"):
        head_softmax_rows(scores, bias.half(), 4, 12, 1.0)
    with pytest.raises(ValueError, match="float32"):
        head_softmax_rows(scores, torch.zeros(2, 48), 4, 12, 1.0)


@pytest.mark.parametrize("masked", [False, True])
def test_stdit3_cross_attention_folded_is_the_unfolded_function(masked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from videosys.models.opensora import stdit3

    calls = _spy(monkeypatch, stdit3)
    torch.manual_seed(0)
    module = CrossAttention(64, 4)
    x, y = torch.randn(2, 40, 64), torch.randn(2, 9, 64)
    mask = None
    if masked:  # samples differ: 5 and 1 valid tokens
        mask = torch.zeros(2, 9, dtype=torch.bool)
        mask[0, :5] = True
        mask[1, 3] = True
    folded, unfolded = _both(module, x, y, mask)
    assert calls == [1]  # the unfolded call did not fold
    assert folded.shape == (2, 40, 64)
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=2e-6)
    # a masked key changes nothing: cutting it away gives the same rows
    if masked:
        with torch.no_grad():
            alone = module(x[1:], y[1:, 3:4])
        torch.testing.assert_close(folded[1:], alone, rtol=0, atol=2e-6)


def test_a_long_caption_takes_the_unfolded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from videosys.models.opensora import stdit3

    calls = _spy(monkeypatch, stdit3)
    module = CrossAttention(64, 4)
    x, y = torch.randn(1, 10, 64), torch.randn(1, 17, 64)  # 4 heads x 17 tokens > 64 channels
    folded, unfolded = _both(module, x, y, None)
    assert calls == []
    assert torch.equal(folded, unfolded)
    assert module.folds(x, 16) and not module.folds(x, 17)


@pytest.mark.parametrize("bias", [False, True])
def test_attention_module_folded_cross_attention_with_grouped_contexts(bias: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from videosys.models.layers import attention

    calls = _spy(monkeypatch, attention)
    torch.manual_seed(1)
    module = Attention(32, heads=2, dim_head=16, cross_attention_dim=24, bias=bias)
    x, context = torch.randn(3, 20, 32), torch.randn(3, 7, 24)
    # the middle group has no valid key: the attention gives zeros there, the module its output bias
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1] = False
    for m in (None, mask):
        folded, unfolded = _both(module, x, context, m)
        torch.testing.assert_close(folded, unfolded, rtol=0, atol=2e-6)
    assert len(calls) == 2
    torch.testing.assert_close(folded[1], module.to_out[0].bias.expand(20, 32).detach(), rtol=0, atol=1e-6)
    # a self-attention never folds (its keys are its own tokens)
    self_attention = Attention(32, heads=2, dim_head=16)
    with torch.no_grad():
        self_attention(torch.randn(1, 5, 32))
    assert len(calls) == 2


def test_bf16_folded_is_as_accurate_as_unfolded() -> None:
    """Against the fp32 module, the bf16 folded form errs no more than the bf16 unfolded one (within 1.5x:
    its A and B matrices are each rounded once, where the unfolded path rounds q, the attention output)."""
    torch.manual_seed(2)
    module = CrossAttention(128, 8)
    x, y = torch.randn(2, 64, 128), torch.randn(2, 12, 128)
    with torch.no_grad():
        exact = module(x, y)
    half = CrossAttention(128, 8).bfloat16()
    half.load_state_dict(module.state_dict())
    folded, unfolded = _both(half, x.bfloat16(), y.bfloat16(), None)
    folded_error = (folded.float() - exact).norm() / exact.norm()
    unfolded_error = (unfolded.float() - exact).norm() / exact.norm()
    assert folded.dtype == torch.bfloat16
    assert folded_error < 1.5 * unfolded_error and folded_error < 0.01, (folded_error, unfolded_error)


def test_folded_cross_attention_names_bad_input() -> None:
    q, out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    x, k = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="k and v"):
        folded_cross_attention(x, k, torch.randn(2, 4, 16), q, out, heads=4)
    with pytest.raises(ValueError, match="q_layer"):
        folded_cross_attention(torch.randn(2, 5, 8), k, k, q, out, heads=4)
    with pytest.raises(ValueError, match="mask must be boolean"):
        folded_cross_attention(x, k, k, q, out, heads=4, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must be boolean"):
        folded_cross_attention(x, k, k, q, out, heads=4, mask=torch.ones(2, 4, dtype=torch.bool))


def test_stdit3_model_folded_and_unfolded_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole tiny STDiT3 (a 6-token caption, one sample's last 2 tokens masked) with every block's
    cross-attention folded, against the same model unfolded."""
    from videosys.models.opensora import stdit3

    calls = _spy(monkeypatch, stdit3)
    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    assert use_folded_cross_attention(model) == 4  # one cross-attention per block
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    inputs = {"x": torch.randn(2, 4, 3, 4, 6, generator=g), "timestep": torch.tensor([977.3, 40.0]),
              "y": torch.randn(2, 6, 32, generator=g), "mask": mask}
    with torch.no_grad():
        folded = model(**inputs)
        assert len(calls) == 4
        use_folded_cross_attention(model, False)
        unfolded = model(**inputs)
    assert len(calls) == 4
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-5)


def _count_calls(modules: list[torch.nn.Module]) -> list[int]:
    """A list that counts the forwards of ``modules`` (forward hooks; removed with the modules)."""
    calls: list[int] = []
    for m in modules:
        m.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_stdit3_prepared_caption_keeps_the_folded_contexts_across_calls() -> None:
    """A request's caption made ready once (``prepare_caption``): the same numbers as the raw caption on
    every call, the caption's key / value projections and folding run on the first call only, and a
    module whose weights change is folded again (only that one)."""
    from videosys.models.opensora.stdit3 import PreparedCaption

    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    x, y = torch.randn(2, 4, 3, 4, 6, generator=g), torch.randn(2, 6, 32, generator=g)
    t = torch.tensor([977.3, 40.0])
    crosses = [m for m in model.modules() if isinstance(m, CrossAttention)]
    projections = _count_calls([m.kv_linear for m in crosses])
    with torch.no_grad():
        prepared = model.prepare_caption(y, mask)
        assert isinstance(prepared, PreparedCaption) and prepared.batch == 2
        raw = model(x, t, y, mask)
        assert len(projections) == 4
        for _ in range(2):
            projections.clear()
            torch.testing.assert_close(model(x, t, prepared), raw, rtol=0, atol=0)
        assert len(prepared.folded) == 4 and len(projections) == 0  # the second call folded nothing
        crosses[1].proj.weight.mul_(1.5)
        projections.clear()
        changed_raw = model(x, t, y, mask)
        projections.clear()
        torch.testing.assert_close(model(x, t, prepared), changed_raw, rtol=0, atol=0)
        assert len(projections) == 1 and not torch.equal(changed_raw, raw)


def test_stdit3_prepared_caption_names_bad_use() -> None:
    model = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    x, y = torch.randn(2, 4, 1, 4, 6), torch.randn(2, 6, 32)
    with torch.no_grad():
        prepared = model.prepare_caption(y)
        with pytest.raises(ValueError, match="mask must be None with a PreparedCaption"):
            model(x, 1.0, prepared, torch.ones(2, 6, dtype=torch.bool))
        with pytest.raises(ValueError, match="holds 2 caption"):
            model(x[:1], 1.0, prepared)
        with pytest.raises(ValueError, match="y must be"):
            model.prepare_caption(torch.randn(2, 6, 31))
        with pytest.raises(ValueError, match="mask must be"):
            model.prepare_caption(y, torch.ones(2, 5, dtype=torch.bool))


def test_latte_keeps_its_captions_folded_contexts_in_a_cache() -> None:
    """The tiny Latte given one FoldedContextCache over calls: the numbers without it, and the caption's
    key / value projections on the first call only."""
    from support import kernel_test_models

    from videosys.models.layers.folded_attention import FoldedContextCache

    latte, inputs = kernel_test_models()["latte"]
    crosses = [m for m in latte.modules() if isinstance(m, Attention) and m.is_cross_attention]
    assert crosses
    projections = _count_calls([m.to_k for m in crosses])
    cache = FoldedContextCache()
    with torch.no_grad():
        want = latte(**inputs)
        assert len(projections) == len(crosses)
        for _ in range(2):
            projections.clear()
            torch.testing.assert_close(latte(**inputs, folded=cache), want, rtol=0, atol=0)
    assert len(cache) == len(crosses) and projections == []


def test_fold_context_and_attend_folded_name_bad_input() -> None:
    from videosys.models.layers.folded_attention import fold_context

    q, out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    k = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="k and v"):
        fold_context(k[0], k[0], q, out, heads=4, kernel=False)
    with pytest.raises(ValueError, match="k and v"):
        fold_context(k, k, q, out, heads=5, kernel=False)
    with pytest.raises(ValueError, match="q_layer"):
        fold_context(torch.randn(2, 3, 8), torch.randn(2, 3, 8), q, out, heads=4, kernel=False)
    context = fold_context(k, k, q, out, heads=4, kernel=False)
    with torch.no_grad():
        assert attend_folded(torch.randn(2, 5, 16), context).shape == (2, 5, 16)
        with pytest.raises(ValueError, match="for this folded context"):
            attend_folded(torch.randn(3, 5, 16), context)  # another number of groups
        with pytest.raises(ValueError, match="for this folded context"):
            attend_folded(torch.randn(2, 5, 16, dtype=torch.float64), context)
        with pytest.raises(ValueError, match="GPU path only"):
            context.float8_operands()
