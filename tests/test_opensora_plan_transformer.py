"""The Open-Sora-Plan v1.1 transformer: the official config and key layout, the full-size parameter count, and
outputs equal to diffusers' LatteTransformer3DModel (the shared skeleton) once the temporal table of
Open-Sora-Plan (positions / interpolation scale, added for any frame count) is put into it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")

from videosys.models.opensora_plan.transformer import (  # noqa: E402
    OpenSoraPlanConfig,
    OpenSoraPlanTransformer3D,
    temporal_interpolation_scale,
)
from videosys.models.weights import CheckpointMismatchError  # noqa: E402
from videosys.testing.tiny_opensora_plan import OFFICIAL_TRANSFORMER_CONFIG as OFFICIAL_CONFIG  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)

def tiny(video_length: int, **overrides: Any) -> dict[str, Any]:
    cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
               cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
               activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
               norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=16, video_length=video_length)
    cfg.update(overrides)
    return cfg


def reference_table(dim: int, frames: int, scale: float) -> torch.Tensor:
    """The reference's temporal table, written out in numpy: float32 positions arange(n) / scale."""
    pos = (np.arange(frames, dtype=np.float32) / np.float32(scale)).astype(np.float64)
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos, omega)
    return torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], axis=1)).float()[None]


def make_pair(video_length: int, seed: int = 0) -> tuple[Any, OpenSoraPlanTransformer3D]:
    ref = diffusers.LatteTransformer3DModel(**tiny(video_length)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ours = OpenSoraPlanTransformer3D(OpenSoraPlanConfig.from_json_dict(tiny(video_length)))
    ours.load_state_dict(ref.state_dict())
    return ref, ours.eval()


def run(ref: Any, ours: OpenSoraPlanTransformer3D, frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, 8, 8, generator=g)
    t = torch.tensor([999, 421])
    text = torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        return ours(x, t, text), ref(x, timestep=t, encoder_hidden_states=text).sample


# --------------------------------------------------------------------------- config and layout


def test_interpolation_scale_rule():
    assert temporal_interpolation_scale(17) == 1
    assert temporal_interpolation_scale(56) == 3
    assert temporal_interpolation_scale(16) == 1 and temporal_interpolation_scale(4) == 1
    assert OpenSoraPlanConfig.from_json_dict({**OFFICIAL_CONFIG, "video_length": 56}).temporal_scale == 3.0
    assert OpenSoraPlanConfig.from_json_dict({**OFFICIAL_CONFIG, "interpolation_scale_1d": 2}).temporal_scale == 2.0


def test_full_size_official_config_on_meta():
    config = OpenSoraPlanConfig.from_json_dict(OFFICIAL_CONFIG)
    assert (config.sample_size, config.video_length, config.inner_dim) == (64, 17, 1152)
    with torch.device("meta"):
        model = OpenSoraPlanTransformer3D(config)
    assert sum(p.numel() for p in model.parameters()) == 1_057_246_880
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed.proj.weight"] == (1152, 4, 2, 2)
    assert shapes["caption_projection.linear_1.weight"] == (1152, 4096)
    assert shapes["transformer_blocks.27.attn2.to_k.weight"] == (1152, 1152)
    assert shapes["temporal_transformer_blocks.0.attn1.to_q.weight"] == (1152, 1152)
    assert "temporal_transformer_blocks.0.attn2.to_q.weight" not in shapes  # no cross-attention in time
    assert shapes["transformer_blocks.0.scale_shift_table"] == (6, 1152)
    assert shapes["proj_out.weight"] == (2 * 2 * 8, 1152)
    assert model.temp_pos_embed.shape == (1, 17, 1152)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"use_rope": True}, "use_rope: true"),
        ({"compress_kv_factor": 2}, "compress_kv_factor: 2"),
        ({"patch_size_t": 2}, "patch_size_t: 2"),
        ({"sample_size": [64, 48]}, "only square sample sizes"),
    ],
)
def test_unsupported_options_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        OpenSoraPlanConfig.from_json_dict({**OFFICIAL_CONFIG, **change})


# --------------------------------------------------------------------------- numerics against diffusers


def test_matches_the_latte_skeleton_with_17_frames():
    ref, ours = make_pair(17)
    assert torch.allclose(ours.temp_pos_embed, reference_table(16, 17, 1.0), atol=1e-7)
    got, expected = run(ref, ours, frames=17)
    torch.testing.assert_close(got, expected, **TOL)


def test_56_frames_use_the_scaled_table():
    ref, ours = make_pair(56)
    table = reference_table(16, 56, 3.0)
    assert torch.allclose(ours.temp_pos_embed, table, atol=1e-7)
    assert not torch.allclose(table, reference_table(16, 56, 1.0))
    ref.temp_pos_embed = table  # diffusers builds arange(56) unscaled: give it the reference's table
    got, expected = run(ref, ours, frames=56)
    torch.testing.assert_close(got, expected, **TOL)


def test_one_frame_still_gets_the_table():
    ref, ours = make_pair(17)
    got, latte = run(ref, ours, frames=1)  # diffusers' Latte skips the table for one frame
    assert not torch.allclose(got, latte, atol=1e-4)
    # Latte's skeleton with row 0 of the table added before the first temporal block reproduces ours
    from videosys.models.latte import LatteTransformer3D

    plain = LatteTransformer3D(ours.config)
    plain.load_state_dict(ours.state_dict())
    plain.eval()
    row = reference_table(16, 1, 1.0)
    plain.add_temporal_pos = lambda h, block, n: h + row.to(h.dtype) if block == 0 else h
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 1, 8, 8, generator=g)
    t = torch.tensor([999, 421])
    text = torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, text), plain(x, t, text), **TOL)


# --------------------------------------------------------------------------- loading


def _save(model: torch.nn.Module, folder: Path, config: dict[str, Any], extra: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.update(extra)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_loads_the_official_layout_with_the_unused_caption_buffer(tmp_path):
    _, ours = make_pair(17)
    config = {**OFFICIAL_CONFIG, **tiny(17), "sample_size": [8, 8]}
    folder = _save(ours, tmp_path / "65x64x64", config, {"caption_projection.y_embedding": torch.randn(120, 16)})
    loaded = OpenSoraPlanTransformer3D.from_pretrained(folder)
    assert "caption_projection.y_embedding" not in loaded.state_dict()
    got, _ = run(make_pair(17)[0], loaded, frames=17)
    expected, _ = run(make_pair(17)[0], ours, frames=17)
    torch.testing.assert_close(got, expected, **TOL)


def test_a_wrong_shape_is_named(tmp_path):
    _, ours = make_pair(17)
    config = {**OFFICIAL_CONFIG, **tiny(17), "sample_size": [8, 8]}
    folder = _save(ours, tmp_path / "bad", config, {})
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    state["proj_out.weight"] = torch.zeros(3, 16)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="proj_out.weight"):
        OpenSoraPlanTransformer3D.from_pretrained(folder)
