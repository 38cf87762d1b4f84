"""Open-Sora v1.2 VAE: official state-dict layout, latent sizes, clip-wise encode/decode, causal convs, loading."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from videosys.models.opensora.vae import SPATIAL_SCALING, OpenSoraVAE
from videosys.models.weights import CheckpointMismatchError
from videosys.testing.tiny_opensora_vae import (
    OFFICIAL_CONFIG,
    make_opensora_vae,
    tiny_config,
    write_tiny_opensora_vae,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _res_block(cin: int, cout: int) -> int:
    """Parameters of a temporal ResBlock: two GroupNorms, two bias-free 3x3x3 convs, 1x1x1 shortcut if cin != cout."""
    return 2 * cin + 2 * cout + 27 * cin * cout + 27 * cout * cout + (cin * cout if cin != cout else 0)


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_meta() -> OpenSoraVAE:
    with torch.device("meta"):
        return OpenSoraVAE.from_config(OFFICIAL_CONFIG)


@pytest.fixture(scope="module")
def tiny() -> OpenSoraVAE:
    return make_opensora_vae(seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_opensora_vae(tmp_path_factory.mktemp("osvae") / "tiny-vae", seed=0)


def _video(frames: int, height: int = 16, width: int = 24, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


# -- full-size layout -----------------------------------------------------------------------------------


def test_full_size_keys_and_shapes(full_meta: OpenSoraVAE) -> None:
    shapes = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    expected = {
        "spatial_vae.module.encoder.conv_in.weight": (128, 3, 3, 3),
        "spatial_vae.module.decoder.conv_out.weight": (3, 128, 3, 3),
        "spatial_vae.module.quant_conv.weight": (8, 8, 1, 1),
        "spatial_vae.module.encoder.mid_block.attentions.0.to_q.weight": (512, 512),
        "temporal_vae.encoder.conv_in.conv.weight": (128, 4, 3, 3, 3),
        "temporal_vae.encoder.block_res_blocks.1.0.conv3.conv.weight": (256, 128, 1, 1, 1),
        "temporal_vae.encoder.block_res_blocks.3.0.conv1.conv.weight": (512, 256, 3, 3, 3),
        "temporal_vae.encoder.conv_blocks.1.conv.weight": (256, 256, 3, 3, 3),
        "temporal_vae.encoder.conv_blocks.2.conv.weight": (256, 256, 3, 3, 3),
        "temporal_vae.encoder.res_blocks.3.norm2.weight": (512,),
        "temporal_vae.encoder.conv2.conv.weight": (8, 512, 1, 1, 1),
        "temporal_vae.quant_conv.conv.weight": (8, 8, 1, 1, 1),
        "temporal_vae.post_quant_conv.conv.weight": (4, 4, 1, 1, 1),
        "temporal_vae.decoder.conv1.conv.weight": (512, 4, 3, 3, 3),
        "temporal_vae.decoder.conv1.conv.bias": (512,),
        "temporal_vae.decoder.conv_blocks.2.conv.weight": (1024, 512, 3, 3, 3),
        "temporal_vae.decoder.conv_blocks.1.conv.weight": (512, 256, 3, 3, 3),
        "temporal_vae.decoder.block_res_blocks.2.0.conv3.conv.weight": (256, 512, 1, 1, 1),
        "temporal_vae.decoder.block_res_blocks.0.0.conv3.conv.weight": (128, 256, 1, 1, 1),
        "temporal_vae.decoder.norm1.weight": (128,),
        "temporal_vae.decoder.conv_out.conv.weight": (4, 128, 3, 3, 3),
        "temporal_vae.decoder.conv_out.conv.bias": (4,),
        "scale": (1, 4, 1, 1, 1),
        "shift": (1, 4, 1, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    absent = [
        "temporal_vae.encoder.conv_blocks.0.conv.weight",  # nn.Identity: no time stride at level 0
        "temporal_vae.decoder.conv_blocks.0.conv.weight",
        "temporal_vae.encoder.conv_in.conv.bias",  # bias-free convs
        "temporal_vae.encoder.block_res_blocks.0.0.conv1.conv.bias",
        "temporal_vae.encoder.block_res_blocks.0.0.conv3.conv.weight",  # 128 -> 128: no shortcut conv
    ]
    for key in absent:
        assert key not in shapes, key
    convs = [getattr(m, "conv", None) for m in full_meta.temporal_vae.encoder.conv_blocks]
    assert convs[0] is None and all(c.stride == (2, 1, 1) for c in convs[1:])
    assert full_meta.out_channels == 4 and full_meta.spatial_downsample == 8 and full_meta.time_downsample == 4


def test_full_size_parameter_count(full_meta: OpenSoraVAE) -> None:
    # Spatial: the SDXL AutoencoderKL = encoder 34,163,592 + decoder 49,490,179 + quant_conv 72 + post_quant_conv 20.
    spatial = 34_163_592 + 49_490_179 + 72 + 20
    assert spatial == 83_653_863 == _count(full_meta.spatial_vae)
    # Temporal encoder: conv_in 4->128 (no bias); levels of 4 ResBlocks at 128, 128->256, 256, 256->512; strided
    # convs 256->256 (+bias) at conv_blocks.1/2; 4 ResBlocks 512; GroupNorm 512; conv2 512->8 (1x1x1, bias).
    encoder = (
        27 * 4 * 128
        + 4 * _res_block(128, 128)
        + _res_block(128, 256) + 3 * _res_block(256, 256)
        + 4 * _res_block(256, 256)
        + _res_block(256, 512) + 3 * _res_block(512, 512)
        + 2 * (27 * 256 * 256 + 256)
        + 4 * _res_block(512, 512)
        + 2 * 512 + 512 * 8 + 8
    )
    # Temporal decoder: conv1 4->512 (+bias); 4 ResBlocks 512; level 3: 4 x 512 then conv_blocks.2 512->1024;
    # level 2: 512->256 + 3 x 256 then conv_blocks.1 256->512; level 1: 4 x 256; level 0: 256->128 + 3 x 128;
    # GroupNorm 128; conv_out 128->4 (+bias).
    decoder = (
        27 * 4 * 512 + 512
        + 4 * _res_block(512, 512)
        + 4 * _res_block(512, 512) + 27 * 512 * 1024 + 1024
        + _res_block(512, 256) + 3 * _res_block(256, 256) + 27 * 256 * 512 + 512
        + 4 * _res_block(256, 256)
        + _res_block(256, 128) + 3 * _res_block(128, 128)
        + 2 * 128 + 27 * 128 * 4 + 4
    )
    assert (encoder, decoder) == (144_421_128, 165_265_924)
    assert encoder == _count(full_meta.temporal_vae.encoder) and decoder == _count(full_meta.temporal_vae.decoder)
    temporal = encoder + decoder + (8 * 8 + 8) + (4 * 4 + 4)  # + quant_conv, post_quant_conv
    assert temporal == 309_687_144 == _count(full_meta.temporal_vae)
    # 393,341,007 parameters, plus the 8 floats of the scale/shift buffers in the state dict: 393,341,015 fp32
    # values, which with the safetensors header is exactly the official model.safetensors size (1,573,430,548 B).
    assert _count(full_meta) == spatial + temporal == 393_341_007
    assert sum(v.numel() for v in full_meta.state_dict().values()) == 393_341_015


def test_official_config_builds_sdxl_architecture(full_meta: OpenSoraVAE) -> None:
    cfg = full_meta.spatial_vae.module.config
    assert tuple(cfg.block_out_channels) == (128, 256, 512, 512)
    assert cfg.layers_per_block == 2 and cfg.norm_num_groups == 32 and cfg.latent_channels == 4
    assert full_meta.spatial_vae.micro_batch_size == 4 and full_meta.micro_frame_size == 17
    assert full_meta.micro_z_frame_size == 5


def test_shift_and_scale_come_from_config() -> None:
    config = copy.deepcopy(OFFICIAL_CONFIG)
    config["vae_2d"]["config"] = tiny_config()["vae_2d"]["config"]
    config["vae_temporal"] = tiny_config()["vae_temporal"]
    model = OpenSoraVAE.from_config(config)
    assert model.shift.flatten().tolist() == pytest.approx([-0.10, 0.34, 0.27, 0.98])
    assert model.scale.flatten().tolist() == pytest.approx([3.85, 2.32, 2.33, 3.06])
    config["shift"], config["scale"] = [0.0, 1.0, 2.0, 3.0], 2.0
    model = OpenSoraVAE.from_config(config)
    assert model.shift.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert model.scale.flatten().tolist() == [2.0] * 4


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="model_type"):
        OpenSoraVAE.from_config({**OFFICIAL_CONFIG, "model_type": "STDiT3"})
    bad = copy.deepcopy(OFFICIAL_CONFIG)
    bad["vae_temporal"]["type"] = "VAE_Temporal"
    with pytest.raises(ValueError, match="vae_temporal.type"):
        OpenSoraVAE.from_config(bad)
    bad = copy.deepcopy(OFFICIAL_CONFIG)
    bad["vae_2d"]["config"] = {"block_out_chanels": [8]}
    with pytest.raises(ValueError, match="block_out_chanels"):
        OpenSoraVAE.from_config(bad)


# -- sizes and round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames,latent", [(51, 15), (102, 30), (17, 5), (1, 1), (20, 6), (16, 4), (34, 10), (18, 6)])
def test_latent_frames(tiny: OpenSoraVAE, full_meta: OpenSoraVAE, frames: int, latent: int) -> None:
    assert tiny.latent_frames(frames) == latent == full_meta.latent_frames(frames)
    assert latent == 5 * (frames // 17) + -(-(frames % 17) // 4)


def test_latent_size(full_meta: OpenSoraVAE) -> None:
    assert full_meta.latent_size(51, 480, 854) == (15, 60, 106)
    assert full_meta.latent_size(102, 720, 1280) == (30, 90, 160)
    with pytest.raises(ValueError):
        full_meta.latent_frames(0)


@pytest.mark.parametrize("frames", [51, 102, 17, 1, 20])
def test_encode_decode_shapes(tiny: OpenSoraVAE, frames: int) -> None:
    height, width = 20, 28  # not multiples of 8: latents 2x3, decoded 16x24
    x = _video(frames, height, width)
    z = tiny.encode(x, generator=torch.Generator().manual_seed(0))
    assert tuple(z.shape) == (1, 4, *tiny.latent_size(frames, height, width))
    y = tiny.decode(z, frames)
    assert tuple(y.shape) == (1, 3, frames, 16, 24)
    assert torch.isfinite(y).all()


def test_decode_rejects_wrong_frame_count(tiny: OpenSoraVAE) -> None:
    z = torch.zeros(1, 4, 15, 2, 3)
    with pytest.raises(ValueError, match="latent frames"):
        tiny.decode(z, 52)
    with pytest.raises(ValueError, match="channels"):
        tiny.decode(torch.zeros(1, 3, 15, 2, 3), 51)


def test_sampling_is_seeded(tiny: OpenSoraVAE) -> None:
    x = _video(20)
    a = tiny.encode(x, generator=torch.Generator().manual_seed(3))
    b = tiny.encode(x, generator=torch.Generator().manual_seed(3))
    mean = tiny.encode(x, sample=False)
    assert torch.equal(a, b)
    assert torch.equal(mean, tiny.encode(x, sample=False))
    assert not torch.allclose(a, mean)


def _reference_decode(model: OpenSoraVAE, z: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The reference procedure spelled out: denormalise, temporal decode per clip of 5 latent frames with
    min(17, remaining) frames, concatenate, then 2D decode of all (B T) images in slices of 4."""
    z = z * model.scale + model.shift
    pieces, remaining = [], num_frames
    for start in range(0, z.shape[2], 5):
        pieces.append(model.temporal_vae.decode(z[:, :, start : start + 5], num_frames=min(17, remaining)))
        remaining -= 17
    x_z = torch.cat(pieces, dim=2)
    b, c, t, h, w = x_z.shape
    images = x_z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    decoder = model.spatial_vae.module
    frames = torch.cat([decoder.decode(images[i : i + 4] / SPATIAL_SCALING).sample for i in range(0, b * t, 4)])
    return frames.reshape(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("frames", [51, 20, 3])
def test_decode_matches_clipwise_reference(tiny: OpenSoraVAE, frames: int) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, tiny.latent_frames(frames), 2, 3, generator=g)
    with torch.no_grad():
        expected = _reference_decode(tiny, z, frames)
    torch.testing.assert_close(tiny.decode(z, frames), expected, rtol=1e-5, atol=1e-5)


def test_encode_matches_clipwise_reference(tiny: OpenSoraVAE) -> None:
    x = _video(40, batch=2)
    with torch.no_grad():
        b, c, t, h, w = x.shape
        images = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        ae = tiny.spatial_vae.module
        lat = torch.cat([ae.encode(images[i : i + 4]).latent_dist.mode() for i in range(0, b * t, 4)])
        x_z = (lat * SPATIAL_SCALING).reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4)
        clips = [x_z[:, :, i : i + 17] for i in range(0, t, 17)]
        z = torch.cat([tiny.temporal_vae.encode(c, sample_posterior=False) for c in clips], dim=2)
        expected = (z - tiny.shift) / tiny.scale
    torch.testing.assert_close(tiny.encode(x, sample=False), expected, rtol=1e-5, atol=1e-5)


def test_causal_conv_sees_no_later_frames() -> None:
    from videosys.models.opensora.temporal_vae import CausalConv3d

    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 5, 6)
    x2 = x.clone()
    x2[:, :, 5:] += 1.0
    for stride in (1, 2):
        conv = CausalConv3d(4, 4, 3, time_stride=stride).eval()
        with torch.no_grad():
            y, y2 = conv(x), conv(x2)
        assert y.shape[2] == 8 // stride
        # output frame t reads input frames t-2..t (stride 1) or 2t-1..2t+1 (stride 2)
        last_clean = 4 if stride == 1 else 1
        torch.testing.assert_close(y[:, :, : last_clean + 1], y2[:, :, : last_clean + 1], rtol=0, atol=0)
        assert not torch.allclose(y[:, :, last_clean + 1], y2[:, :, last_clean + 1])


def test_encode_clips_are_independent(tiny: OpenSoraVAE) -> None:
    # The convolutions are causal, but GroupNorm statistics span a clip's frames (as in the reference), so
    # a latent depends on its whole clip; clips of 17 frames (5 latent frames) are encoded independently.
    x = _video(51)
    x2 = x.clone()
    x2[:, :, 20] = 0.0  # a frame of clip 1 (frames 17..33)
    z, z2 = tiny.encode(x, sample=False), tiny.encode(x2, sample=False)
    torch.testing.assert_close(z[:, :, :5], z2[:, :, :5], rtol=0, atol=0)
    torch.testing.assert_close(z[:, :, 10:], z2[:, :, 10:], rtol=0, atol=0)
    assert not torch.allclose(z[:, :, 5:10], z2[:, :, 5:10])


def test_decode_clips_are_independent(tiny: OpenSoraVAE) -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 10, 2, 3, generator=g)
    z2 = z.clone()
    z2[:, :, 4] += 1.0  # latent frame of clip 0 (video frames 0..16)
    y, y2 = tiny.decode(z, 34), tiny.decode(z2, 34)
    torch.testing.assert_close(y[:, :, 17:], y2[:, :, 17:], rtol=0, atol=0)
    assert not torch.allclose(y[:, :, :17], y2[:, :, :17])


def test_whole_video_without_clips() -> None:
    model = make_opensora_vae(seed=0)
    model.micro_frame_size = None
    assert model.latent_frames(51) == 13 and model.latent_frames(1) == 1
    z = model.encode(_video(9), sample=False)
    assert tuple(model.decode(z, 9).shape) == (1, 3, 9, 16, 24)


# -- checkpoint folder ----------------------------------------------------------------------------------


def test_tiny_checkpoint_layout(tiny_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((tiny_dir / "config.json").read_text())
    for key, value in OFFICIAL_CONFIG.items():
        if key not in ("vae_2d", "vae_temporal"):
            assert config[key] == value, key
    assert {k: v for k, v in config["vae_2d"].items() if k != "config"} == OFFICIAL_CONFIG["vae_2d"]
    assert config["vae_temporal"]["type"] == "VAE_Temporal_SD"
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"scale", "shift"} <= keys
    assert all(k in ("scale", "shift") or k.startswith(("spatial_vae.module.", "temporal_vae.")) for k in keys)


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_opensora_vae(tmp_path / "a", seed=5)
    b = write_tiny_opensora_vae(tmp_path / "b", seed=5)
    c = write_tiny_opensora_vae(tmp_path / "c", seed=6)
    for name in ("config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_tiny_opensora_vae(tmp_path / "other")


def test_from_pretrained_equals_in_memory(tiny_dir: Path, tiny: OpenSoraVAE) -> None:
    loaded = OpenSoraVAE.from_pretrained(tiny_dir)
    assert not loaded.training
    ref = tiny.state_dict()
    got = loaded.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    x = _video(20)
    torch.testing.assert_close(loaded.encode(x, sample=False), tiny.encode(x, sample=False), rtol=0, atol=0)


def test_from_pretrained_bfloat16(tiny_dir: Path) -> None:
    model = OpenSoraVAE.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.shift.dtype == torch.bfloat16
    y = model.decode(torch.zeros(1, 4, 1, 2, 3), 1)
    assert y.dtype == torch.bfloat16 and tuple(y.shape) == (1, 3, 1, 16, 24)


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_missing_key_is_named(tmp_path: Path) -> None:
    folder = write_tiny_opensora_vae(tmp_path / "vae", seed=0)
    key = "temporal_vae.decoder.conv_blocks.2.conv.weight"
    _rewrite(folder, lambda s: s.pop(key))
    with pytest.raises(CheckpointMismatchError, match="conv_blocks.2.conv.weight") as info:
        OpenSoraVAE.from_pretrained(folder)
    assert info.value.missing == [key]


def test_unexpected_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    folder = write_tiny_opensora_vae(tmp_path / "vae", seed=0)

    def edit(state: dict) -> None:
        state["temporal_vae.encoder.conv_blocks.0.conv.weight"] = torch.zeros(1)
        state["shift"] = torch.zeros(4)

    _rewrite(folder, edit)
    with pytest.raises(CheckpointMismatchError) as info:
        OpenSoraVAE.from_pretrained(folder)
    assert info.value.unexpected == ["temporal_vae.encoder.conv_blocks.0.conv.weight"]
    assert len(info.value.mismatched) == 1 and info.value.mismatched[0].startswith("shift:")


def test_checkpoint_shift_differing_from_config_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_tiny_opensora_vae(tmp_path / "vae", seed=0)
    _rewrite(folder, lambda s: s.__setitem__("shift", torch.zeros(1, 4, 1, 1, 1)))
    with caplog.at_level(logging.WARNING, logger="videosys.models.opensora.vae"):
        model = OpenSoraVAE.from_pretrained(folder)
    assert "shift" in caplog.text
    assert model.shift.abs().max().item() == 0.0
