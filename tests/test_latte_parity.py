"""Our Latte transformer against diffusers' LatteTransformer3DModel: same keys, same outputs (fp32, 1e-5),
loaded from a diffusers ``save_pretrained`` folder; plus the loader's error paths and the full-size shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")

from videosys.models.latte import LatteConfig, LatteTransformer3D  # noqa: E402
from videosys.models.weights import CheckpointMismatchError  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=16,
        attention_bias=True,
        sample_size=8,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=16,
        video_length=4,
    )
    cfg.update(overrides)
    return cfg


def make_reference(seed: int = 0, **overrides: Any) -> "diffusers.LatteTransformer3DModel":
    """A diffusers model with every parameter (zero-initialised ones too) drawn from a seeded normal."""
    model = diffusers.LatteTransformer3DModel(**tiny_config(**overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def save_reference(ref: Any, folder: Path, **kwargs: Any) -> Path:
    ref.save_pretrained(folder, **kwargs)
    return folder


def inputs(batch: int, frames: int, height: int, width: int, text_len: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([999, 500, 37, 1][:batch], dtype=torch.long),
        encoder_hidden_states=torch.randn(batch, text_len, 16, generator=g),
    )


def diffusers_bias(mask: torch.Tensor, frames: int) -> torch.Tensor:
    """Our [B, L] keep-mask as the additive [B*F, 1, L] bias diffusers' Latte spatial blocks take."""
    bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, -10000.0)
    return bias.repeat_interleave(frames, dim=0)[:, None, :]


def run_both(ref: Any, ours: LatteTransformer3D, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None):
    frames = x["hidden_states"].shape[2]
    with torch.no_grad():
        expected = ref(**x, encoder_attention_mask=None if mask is None else diffusers_bias(mask, frames)).sample
        got = ours(**x, encoder_attention_mask=mask)
    return got, expected


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory):
    ref = make_reference()
    folder = save_reference(ref, tmp_path_factory.mktemp("latte") / "transformer")
    return ref, LatteTransformer3D.from_pretrained(folder), folder


# -- keys and shapes -------------------------------------------------------------------------------------


def test_state_dict_keys_identical(tiny_pair) -> None:
    ref, ours, _ = tiny_pair
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd) or sorted(ours_sd) == sorted(ref_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    # Only position tables are non-persistent buffers.
    assert {n for n, _ in ours.named_buffers()} == {"pos_embed.pos_embed", "temp_pos_embed"}


def test_loaded_model_is_eval_fp32_cpu(tiny_pair) -> None:
    _, ours, _ = tiny_pair
    assert not ours.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in ours.parameters())
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))


def test_full_size_latte1_shapes_on_meta() -> None:
    cfg = LatteConfig(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2, caption_channels=4096,
        video_length=16, norm_elementwise_affine=False, norm_eps=1e-6,
    )
    with torch.device("meta"):
        model = LatteTransformer3D(cfg)
    assert sum(p.numel() for p in model.parameters()) == 1_057_246_880
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed.proj.weight"] == [1152, 4, 2, 2]
    assert shapes["adaln_single.emb.timestep_embedder.linear_1.weight"] == [1152, 256]
    assert shapes["adaln_single.linear.weight"] == [6912, 1152]
    assert shapes["caption_projection.linear_1.weight"] == [1152, 4096]
    assert shapes["transformer_blocks.0.attn1.to_q.weight"] == [1152, 1152]
    assert shapes["transformer_blocks.0.attn2.to_k.weight"] == [1152, 1152]
    assert shapes["transformer_blocks.0.ff.net.0.proj.weight"] == [4608, 1152]
    assert shapes["transformer_blocks.0.scale_shift_table"] == [6, 1152]
    assert not any(k.startswith("temporal_transformer_blocks.0.attn2.") for k in shapes)
    assert shapes["scale_shift_table"] == [2, 1152]
    assert shapes["proj_out.weight"] == [32, 1152]
    assert "transformer_blocks.0.norm1.weight" not in shapes  # norm_elementwise_affine False
    assert len([k for k in shapes if k.startswith("transformer_blocks.27.")]) > 0
    assert not any(k.startswith("transformer_blocks.28.") for k in shapes)


# -- outputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_length", [2, 4, 5])
def test_parity_full_video_length(video_length: int, tmp_path: Path) -> None:
    ref = make_reference(seed=video_length, video_length=video_length)
    ours = LatteTransformer3D.from_pretrained(save_reference(ref, tmp_path))
    got, expected = run_both(ref, ours, inputs(1, video_length, 8, 8, text_len=5))
    assert got.shape == (1, 8, video_length, 8, 8)
    torch.testing.assert_close(got, expected, **TOL)


def test_parity_single_frame(tmp_path: Path) -> None:
    ref = make_reference(seed=3, video_length=1)
    ours = LatteTransformer3D.from_pretrained(save_reference(ref, tmp_path))
    got, expected = run_both(ref, ours, inputs(1, 1, 8, 8, text_len=4))
    torch.testing.assert_close(got, expected, **TOL)


def test_parity_non_square_latent(tiny_pair) -> None:
    ref, ours, _ = tiny_pair
    got, expected = run_both(ref, ours, inputs(1, 4, 8, 12, text_len=6))
    assert got.shape == (1, 8, 4, 8, 12)
    torch.testing.assert_close(got, expected, **TOL)
    got, expected = run_both(ref, ours, inputs(1, 4, 4, 6, text_len=6))  # grid smaller than sample_size
    torch.testing.assert_close(got, expected, **TOL)


def test_parity_batch_with_prompt_masks(tiny_pair) -> None:
    ref, ours, _ = tiny_pair
    x = inputs(2, 4, 8, 8, text_len=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False  # prompt of 5 tokens
    mask[1, 3:] = False  # prompt of 3 tokens
    got, expected = run_both(ref, ours, x, mask)
    torch.testing.assert_close(got, expected, **TOL)
    # The mask matters, and a 0/1 integer mask means the same as the boolean one.
    with torch.no_grad():
        unmasked = ours(**x)
        int_mask = ours(**x, encoder_attention_mask=mask.long())
    assert not torch.allclose(unmasked, got)
    torch.testing.assert_close(int_mask, got, atol=0, rtol=0)


def test_parity_batch_without_mask(tiny_pair) -> None:
    ref, ours, _ = tiny_pair
    got, expected = run_both(ref, ours, inputs(2, 4, 8, 8, text_len=5))
    torch.testing.assert_close(got, expected, **TOL)
    # All-true mask == no mask.
    with torch.no_grad():
        all_true = ours(**inputs(2, 4, 8, 8, text_len=5), encoder_attention_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(all_true, got, atol=0, rtol=0)


def test_parity_scalar_timestep(tiny_pair) -> None:
    ref, ours, _ = tiny_pair
    x = inputs(2, 4, 8, 8, text_len=5)
    with torch.no_grad():
        expected = ref(**{**x, "timestep": torch.tensor([250, 250])}).sample
        got = ours(**{**x, "timestep": 250})
    torch.testing.assert_close(got, expected, **TOL)


def test_parity_elementwise_affine(tmp_path: Path) -> None:
    ref = make_reference(seed=7, norm_elementwise_affine=True)
    assert "transformer_blocks.0.norm1.weight" in ref.state_dict()
    ours = LatteTransformer3D.from_pretrained(save_reference(ref, tmp_path))
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 2:] = False
    got, expected = run_both(ref, ours, inputs(2, 4, 8, 8, text_len=6), mask)
    torch.testing.assert_close(got, expected, **TOL)


def test_frames_other_than_video_length(tiny_pair) -> None:
    """F != video_length: our temporal table is computed for the actual F, which is exactly what diffusers
    computes when built with video_length = F (video_length only sets that table)."""
    ref, ours, _ = tiny_pair
    for frames in (3, 6):
        other = diffusers.LatteTransformer3DModel(**tiny_config(video_length=frames)).eval()
        other.load_state_dict(ref.state_dict())
        got, expected = run_both(other, ours, inputs(1, frames, 8, 8, text_len=5))
        torch.testing.assert_close(got, expected, **TOL)


# -- loading ---------------------------------------------------------------------------------------------


def test_load_sharded_fp16_variant_and_bin(tiny_pair, tmp_path: Path) -> None:
    ref, ours, _ = tiny_pair
    x = inputs(1, 4, 8, 8, text_len=5)
    with torch.no_grad():
        expected = ours(**x)

    sharded = save_reference(ref, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    binary = save_reference(ref, tmp_path / "bin", safe_serialization=False)
    assert (binary / "diffusion_pytorch_model.bin").is_file()
    for folder in (sharded, binary):
        with torch.no_grad():
            torch.testing.assert_close(LatteTransformer3D.from_pretrained(folder)(**x), expected, atol=0, rtol=0)

    fp16 = save_reference(ref.to(torch.float16), tmp_path / "fp16", variant="fp16")
    ref.to(torch.float32)
    assert (fp16 / "diffusion_pytorch_model.fp16.safetensors").is_file()
    model = LatteTransformer3D.from_pretrained(fp16, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in model.parameters())
    model32 = LatteTransformer3D.from_pretrained(fp16)  # fp16 weights, upcast to the default fp32
    with torch.no_grad():
        torch.testing.assert_close(model32(**x), expected, atol=0.05, rtol=0.05)


def _rewrite_weights(folder: Path, edit) -> None:
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_key_is_named(tiny_pair, tmp_path: Path) -> None:
    ref, _, _ = tiny_pair
    folder = save_reference(ref, tmp_path / "m")
    _rewrite_weights(folder, lambda s: s.pop("transformer_blocks.1.attn2.to_v.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): transformer_blocks\.1\.attn2\.to_v\.bias"):
        LatteTransformer3D.from_pretrained(folder)


def test_extra_key_is_named(tiny_pair, tmp_path: Path) -> None:
    ref, _, _ = tiny_pair
    folder = save_reference(ref, tmp_path / "e")
    _rewrite_weights(folder, lambda s: s.update({"caption_projection.y_embedding": torch.zeros(3, 16)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): caption_projection\.y_embedding"):
        LatteTransformer3D.from_pretrained(folder)

    class Allowing(LatteTransformer3D):
        ignored_checkpoint_keys = ("caption_projection.y_embedding",)

    assert isinstance(Allowing.from_pretrained(folder), Allowing)


def test_shape_mismatch_is_named(tiny_pair, tmp_path: Path) -> None:
    ref, _, _ = tiny_pair
    folder = save_reference(ref, tmp_path / "s")
    _rewrite_weights(folder, lambda s: s.update({"proj_out.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointMismatchError, match=r"proj_out\.bias: checkpoint \[5\] vs model \[32\]"):
        LatteTransformer3D.from_pretrained(folder)


def test_missing_folder_and_files(tiny_pair, tmp_path: Path) -> None:
    ref, _, _ = tiny_pair
    with pytest.raises(FileNotFoundError, match="nope"):
        LatteTransformer3D.from_pretrained(tmp_path / "nope")
    folder = save_reference(ref, tmp_path / "f")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors"):
        LatteTransformer3D.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        LatteTransformer3D.from_pretrained(folder)


def test_config_from_json_dict(tiny_pair) -> None:
    _, ours, folder = tiny_pair
    data = json.loads((folder / "config.json").read_text())
    assert "_class_name" in data and "dropout" in data
    cfg = LatteConfig.from_json_dict(data)
    assert cfg == ours.config and cfg.video_length == 4 and cfg.caption_channels == 16
    with pytest.raises(ValueError, match="activation_fn 'geglu'"):
        LatteConfig.from_json_dict({**data, "activation_fn": "geglu"})
    with pytest.raises(ValueError, match="norm_type 'layer_norm'"):
        LatteConfig.from_json_dict({**data, "norm_type": "layer_norm"})


def test_bad_inputs(tiny_pair) -> None:
    _, ours, _ = tiny_pair
    x = inputs(2, 4, 8, 8, text_len=5)
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        ours(**x, encoder_attention_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="additive bias"):
        ours(**x, encoder_attention_mask=torch.full((2, 5), -10000.0))
    with pytest.raises(ValueError, match="timestep"):
        ours(**{**x, "timestep": torch.tensor([1, 2, 3])})
    with pytest.raises(ValueError, match="patch_size"):
        ours(**{**x, "hidden_states": torch.randn(2, 4, 4, 7, 8)})
