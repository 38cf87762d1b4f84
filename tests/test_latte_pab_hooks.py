"""PAB hooks of the Latte block and transformer: what is routed through ``run_module``, with which kind,
site and block, and that a broadcast really skips the work."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from videosys.models.latte import LatteConfig, LatteTransformer3D
from videosys.models.layers.attention import Attention
from videosys.models.layers.blocks import LatteBlock
from videosys.pab import PABConfig, PABScheduler

NUM_LAYERS = 2


@pytest.fixture(scope="module")
def model() -> LatteTransformer3D:
    cfg = LatteConfig(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=NUM_LAYERS,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16, video_length=4,
    )
    torch.manual_seed(0)
    m = LatteTransformer3D(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m


def _inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return dict(
        hidden_states=torch.randn(2, 4, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
        encoder_attention_mask=mask,
    )


class Recorder:
    """A stand-in PAB run: records every routed module and computes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.outputs: list[torch.Tensor] = []

    def compute_or_broadcast(self, kind: str, block: int, fn: Callable[[], Any], site: str = "") -> Any:
        out = fn()
        self.calls.append((kind, site, block))
        self.outputs.append(out)
        return out


def _count_attention_calls(model: torch.nn.Module) -> tuple[dict[str, int], list[Any]]:
    counts = {"attn": 0, "ff": 0}
    handles = []
    for m in model.modules():
        if isinstance(m, Attention):
            handles.append(m.register_forward_hook(lambda *_: counts.__setitem__("attn", counts["attn"] + 1)))
        if isinstance(m, LatteBlock):
            handles.append(m.ff.register_forward_hook(lambda *_: counts.__setitem__("ff", counts["ff"] + 1)))
    return counts, handles


def test_routing_order_kinds_sites_and_identity(model: LatteTransformer3D) -> None:
    x = _inputs()
    rec = Recorder()
    with torch.no_grad():
        plain = model(**x, timestep=torch.tensor([500, 500]))
        routed = model(**x, timestep=torch.tensor([500, 500]), pab=rec)  # type: ignore[arg-type]
    assert torch.equal(plain, routed)
    expected = []
    for i in range(NUM_LAYERS):
        expected += [("spatial", "", i), ("cross", "", i), ("mlp", "spatial", i), ("temporal", "", i), ("mlp", "temporal", i)]
    assert rec.calls == expected


def test_disabled_run_is_bit_identical(model: LatteTransformer3D) -> None:
    x = _inputs()
    run = PABScheduler(PABConfig.disabled()).new_run([700, 500])
    with torch.no_grad(), run:
        for t in (700, 500):
            run.begin_call()
            ts = torch.tensor([t, t])
            assert torch.equal(model(**x, timestep=ts, pab=run), model(**x, timestep=ts))
    assert sum(run.stats.broadcast.values()) == 0


def test_attention_broadcast_skips_attention(model: LatteTransformer3D) -> None:
    cfg = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 2, "temporal_range": 2, "cross_range": 2})
    run = PABScheduler(cfg).new_run([500, 500])
    x = _inputs()
    ts = torch.tensor([500, 500])
    counts, handles = _count_attention_calls(model)
    try:
        with torch.no_grad(), run:
            run.begin_call()
            first = model(**x, timestep=ts, pab=run)
            assert counts == {"attn": 3 * NUM_LAYERS, "ff": 2 * NUM_LAYERS}
            run.begin_call()
            second = model(**x, timestep=ts, pab=run)
            assert counts == {"attn": 3 * NUM_LAYERS, "ff": 4 * NUM_LAYERS}  # no attention on call 2
            assert run.cached_entries == 0  # nothing kept past its last use
    finally:
        for h in handles:
            h.remove()
    # Same latents and timestep: the broadcast outputs are exactly what would have been computed.
    assert torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(second, model(**x, timestep=ts))
    assert run.stats.broadcast == {"spatial": NUM_LAYERS, "temporal": NUM_LAYERS, "cross": NUM_LAYERS, "mlp": 0}
    assert run.stats.computed == {"spatial": NUM_LAYERS, "temporal": NUM_LAYERS, "cross": NUM_LAYERS, "mlp": 4 * NUM_LAYERS}
    blocks = {"spatial": NUM_LAYERS, "temporal": NUM_LAYERS, "cross": NUM_LAYERS, "mlp": NUM_LAYERS}
    assert run.stats.as_dict() == run.plan.expected_counts(blocks, mlp_sites=2)


def test_gate_is_applied_after_broadcast(model: LatteTransformer3D) -> None:
    """A broadcast attention output is re-gated with the current timestep: changing only the timestep
    changes the output even when all attention is reused."""
    cfg = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 2, "temporal_range": 2, "cross_range": 2})
    run = PABScheduler(cfg).new_run([600, 400])
    x = _inputs()
    with torch.no_grad(), run:
        run.begin_call()
        model(**x, timestep=torch.tensor([600, 600]), pab=run)
        run.begin_call()
        broadcast = model(**x, timestep=torch.tensor([400, 400]), pab=run)
        full = model(**x, timestep=torch.tensor([400, 400]))
    assert not torch.equal(broadcast, full)  # attention reused from t=600 ...
    assert run.stats.broadcast["spatial"] == NUM_LAYERS


def test_mlp_broadcast_per_site(model: LatteTransformer3D) -> None:
    cfg = PABConfig.from_dict({"mlp": {"timesteps": [500], "blocks": [0], "skip_count": 1}})
    run = PABScheduler(cfg).new_run([500, 400])
    x = _inputs()
    counts, handles = _count_attention_calls(model)
    try:
        with torch.no_grad(), run:
            run.begin_call()
            model(**x, timestep=torch.tensor([500, 500]), pab=run)
            run.begin_call()
            model(**x, timestep=torch.tensor([400, 400]), pab=run)
    finally:
        for h in handles:
            h.remove()
    assert counts["ff"] == 4 * NUM_LAYERS - 2  # block 0's spatial and temporal MLPs reused on call 2
    assert run.stats.broadcast["mlp"] == 2


def test_block_pieces_are_pre_gate() -> None:
    """The routed self-attention and MLP outputs are the raw module outputs, before the gate."""
    torch.manual_seed(0)
    blk = LatteBlock(16, 2, 8, cross_attention_dim=12, attention_bias=True, norm_eps=1e-6).eval()
    x = torch.randn(6, 5, 16)  # 2 videos x 3 frames
    t_mod = torch.randn(2, 6 * 16)
    text = torch.randn(2, 4, 12)
    rec = Recorder()
    with torch.no_grad():
        out = blk(x, t_mod, text, None, pab=rec, kind="temporal", block=3)  # type: ignore[arg-type]
        sh, sc, gate, sh2, sc2, gate2 = (blk.scale_shift_table[None] + t_mod.reshape(2, 6, 16)).chunk(6, dim=1)
        rep = lambda v: v.repeat_interleave(3, dim=0)  # noqa: E731  (per-sequence rows)
        attn = blk.attn1(blk.norm1(x) * (1 + rep(sc)) + rep(sh))
        h = x + rep(gate) * attn
        cross = blk.attn2(h, rep(text))
        h = h + cross
        ff = blk.ff(blk.norm2(h) * (1 + rep(sc2)) + rep(sh2))
        expected = h + rep(gate2) * ff
    assert rec.calls == [("temporal", "", 3), ("cross", "", 3), ("mlp", "temporal", 3)]
    torch.testing.assert_close(rec.outputs[0], attn, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rec.outputs[1], cross, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rec.outputs[2], ff, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
