"""Open-Sora-Plan v1.1 CausalVAE: official state-dict layout, frame arithmetic, causality, tiled decode, loading."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videosys.models.opensora_plan import CausalVAE, CausalVAEConfig
from videosys.models.opensora_plan.causal_vae import time_chunks
from videosys.models.opensora_plan.causal_vae_blocks import CausalConv3d, TimeDownsampleRes2x, TimeUpsampleRes2x
from videosys.models.weights import CheckpointMismatchError
from videosys.testing.tiny_causal_vae import (
    OFFICIAL_CONFIG,
    WEIGHTS_FILE,
    make_causal_vae,
    tiny_config,
    write_tiny_causal_vae,
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts of the reference modules, from their definitions in Open-Sora-Plan
# (opensora/models/ae/videobase/modules/*.py): every convolution has a bias, every GroupNorm is affine.
def _conv(cin: int, cout: int, taps: int) -> int:
    return cin * cout * taps + cout


def _gn(c: int) -> int:
    return 2 * c


def _res(cin: int, cout: int, taps: int) -> int:
    """ResnetBlock2D (taps 9) / ResnetBlock3D (taps 27): norm1, conv1, norm2, conv2, 1x1 nin_shortcut if cin != cout."""
    return (
        _gn(cin)
        + _conv(cin, cout, taps)
        + _gn(cout)
        + _conv(cout, cout, taps)
        + (_conv(cin, cout, 1) if cin != cout else 0)
    )


def _attn(c: int) -> int:
    """AttnBlock3DFix: norm and four 1x1x1 convs (q, k, v, proj_out)."""
    return _gn(c) + 4 * _conv(c, c, 1)


@pytest.fixture(scope="module")
def full_meta() -> CausalVAE:
    with torch.device("meta"):
        return CausalVAE.from_config(OFFICIAL_CONFIG)


@pytest.fixture(scope="module")
def tiny() -> CausalVAE:
    return make_causal_vae(seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_vae(tmp_path_factory.mktemp("causalvae") / "vae", seed=0)


def _video(frames: int, height: int = 16, width: int = 24, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


def _latent(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, height, width, generator=g)


# -- full-size layout -----------------------------------------------------------------------------------


def test_full_size_keys_and_shapes(full_meta: CausalVAE) -> None:
    shapes = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),  # a per-frame Conv2d ("encoder_conv_in": "Conv2d")
        "encoder.conv_in.bias": (128,),
        "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),  # ResnetBlock2D
        "encoder.down.0.block.1.norm2.weight": (128,),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.1.time_downsample.conv.weight": (256, 256, 3, 3, 3),  # plain Conv3d: no ".conv.conv"
        "encoder.down.1.time_downsample.conv.bias": (256,),
        "encoder.down.1.time_downsample.mix_factor": (1,),
        "encoder.down.2.block.0.conv1.conv.weight": (512, 256, 3, 3, 3),  # ResnetBlock3D
        "encoder.down.2.block.0.nin_shortcut.conv.weight": (512, 256, 1, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.down.2.time_downsample.conv.weight": (512, 512, 3, 3, 3),
        "encoder.down.2.time_downsample.mix_factor": (1,),
        "encoder.down.3.block.1.conv2.conv.weight": (512, 512, 3, 3, 3),
        "encoder.mid.block_1.conv1.conv.weight": (512, 512, 3, 3, 3),
        "encoder.mid.attn_1.norm.weight": (512,),
        "encoder.mid.attn_1.q.conv.weight": (512, 512, 1, 1, 1),
        "encoder.mid.attn_1.proj_out.conv.bias": (512,),
        "encoder.mid.block_2.norm2.bias": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.conv.weight": (8, 512, 3, 3, 3),
        "quant_conv.conv.weight": (8, 8, 1, 1, 1),
        "post_quant_conv.conv.weight": (4, 4, 1, 1, 1),
        "decoder.conv_in.conv.weight": (512, 4, 3, 3, 3),
        "decoder.mid.attn_1.k.conv.weight": (512, 512, 1, 1, 1),
        "decoder.up.3.block.2.conv2.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up.3.upsample.conv.conv.weight": (512, 512, 1, 3, 3),
        "decoder.up.3.time_upsample.conv.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up.3.time_upsample.mix_factor": (1,),
        "decoder.up.2.time_upsample.conv.conv.bias": (512,),
        "decoder.up.1.block.0.nin_shortcut.conv.weight": (256, 512, 1, 1, 1),
        "decoder.up.1.upsample.conv.conv.weight": (256, 256, 1, 3, 3),
        "decoder.up.0.block.0.conv1.conv.weight": (128, 256, 3, 3, 3),
        "decoder.up.0.block.2.conv2.conv.weight": (128, 128, 3, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.conv.weight": (3, 128, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    absent = [
        "encoder.down.0.time_downsample.mix_factor",  # time downsampling only at levels 1 and 2
        "encoder.down.3.downsample.conv.weight",
        "decoder.up.0.upsample.conv.conv.weight",
        "decoder.up.1.time_upsample.mix_factor",  # time upsampling only at levels 3 and 2
        "encoder.down.0.block.0.nin_shortcut.weight",  # 128 -> 128: no shortcut conv
        "encoder.down.0.attn.0.q.weight",  # attn_resolutions []
    ]
    for key in absent:
        assert key not in shapes, key
    assert len(full_meta.decoder.up[3].block) == 3 and len(full_meta.encoder.down[0].block) == 2
    assert full_meta.latent_channels == 4
    assert full_meta.spatial_downsample == 8 and full_meta.temporal_downsample == 4
    assert full_meta.scaling_factor == 0.18215


def test_full_size_parameter_count(full_meta: CausalVAE) -> None:
    # Encoder (released config): conv_in Conv2d 3->128; down.0: 2 x ResnetBlock2D 128 + Downsample;
    # down.1: ResnetBlock2D 128->256, 256 + Downsample + TimeDownsampleRes2x (Conv3d 3x3x3 + mix_factor);
    # down.2: ResnetBlock3D 256->512, 512 + Downsample + TimeDownsampleRes2x; down.3: 2 x ResnetBlock3D 512;
    # mid: 2 x ResnetBlock3D + AttnBlock3DFix; norm_out; conv_out 512->8 (3x3x3).
    encoder = (
        _conv(3, 128, 9)
        + 2 * _res(128, 128, 9)
        + _conv(128, 128, 9)
        + _res(128, 256, 9)
        + _res(256, 256, 9)
        + _conv(256, 256, 9)
        + _conv(256, 256, 27)
        + 1
        + _res(256, 512, 27)
        + _res(512, 512, 27)
        + _conv(512, 512, 9)
        + _conv(512, 512, 27)
        + 1
        + 2 * _res(512, 512, 27)
        + 2 * _res(512, 512, 27)
        + _attn(512)
        + _gn(512)
        + _conv(512, 8, 27)
    )
    # Decoder: conv_in 4->512 (3x3x3); mid; up.3 and up.2: 3 x ResnetBlock3D 512 + SpatialUpsample2x (1x3x3) +
    # TimeUpsampleRes2x (3x3x3 + mix_factor); up.1: 512->256, 2 x 256 + SpatialUpsample2x; up.0: 256->128, 2 x 128;
    # norm_out; conv_out 128->3.
    decoder = (
        _conv(4, 512, 27)
        + 2 * _res(512, 512, 27)
        + _attn(512)
        + 2 * (3 * _res(512, 512, 27) + _conv(512, 512, 9) + _conv(512, 512, 27) + 1)
        + _res(512, 256, 27)
        + 2 * _res(256, 256, 27)
        + _conv(256, 256, 9)
        + _res(256, 128, 27)
        + 2 * _res(128, 128, 27)
        + _gn(128)
        + _conv(128, 3, 27)
    )
    assert (encoder, decoder) == (97_349_258, 149_510_149)
    assert _count(full_meta.encoder) == encoder and _count(full_meta.decoder) == decoder
    quant = _conv(8, 8, 1) + _conv(4, 4, 1)
    # 246,859,499 fp32 values = 987.4 MB of weights (the hub file is 1.07 GB; see the module docstring).
    assert _count(full_meta) == encoder + decoder + quant == 246_859_499
    assert sum(v.numel() for v in full_meta.state_dict().values()) == 246_859_499  # no buffers


def test_config_round_trip_and_defaults() -> None:
    config = CausalVAEConfig.from_json_dict(OFFICIAL_CONFIG)
    assert config == CausalVAEConfig()  # the dataclass defaults are the released VAE's values
    data = config.to_json_dict()
    for key, value in OFFICIAL_CONFIG.items():
        if not key.startswith("_"):
            assert data[key] == value, key
    with torch.device("meta"):
        model = CausalVAE(config)
    assert (model.tile_latent_min_size, model.tile_latent_min_size_t, model.tile_overlap_factor) == (64, 8, 0.25)
    assert (model.tile_sample_min_size, model.tile_sample_min_size_t) == (512, 29)
    overridden = CausalVAE.from_config({**tiny_config(), "scaling_factor": 0.5, "tile_latent_min_size": 16})
    assert overridden.scaling_factor == 0.5 and overridden.tile_latent_min_size == 16
    assert (
        CausalVAE(CausalVAEConfig.from_json_dict(tiny_config()), tile_latent_min_size_t=3).tile_latent_min_size_t == 3
    )


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("_class_name", "AutoencoderKL", "_class_name"),
        ("attn_resolutions", [16], "attn_resolutions"),
        ("double_z", False, "double_z"),
        ("encoder_attention", "AttnBlock3D", "encoder_attention"),
        (
            "encoder_temporal_downsample",
            ["", "TimeDownsample2x", "TimeDownsampleRes2x", ""],
            "encoder_temporal_downsample",
        ),
        ("decoder_spatial_upsample", ["", "SpatialUpsample2x", "SpatialUpsample2x"], "decoder_spatial_upsample"),
        ("decoder_temporal_upsample", ["", "", "", "TimeUpsampleRes2x"], "decoder_temporal_upsample"),
        ("norm_num_groups", 3, "norm_num_groups"),
        ("tile_overlap_factor", 1.0, "tile_overlap_factor"),
    ],
)
def test_config_errors(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CausalVAE.from_config({**tiny_config(), field: value})


# -- frame arithmetic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("frames,latent", [(65, 17), (221, 56), (1, 1), (5, 2), (17, 5)])
def test_frame_arithmetic(full_meta: CausalVAE, tiny: CausalVAE, frames: int, latent: int) -> None:
    assert full_meta.latent_frames(frames) == tiny.latent_frames(frames) == latent
    assert full_meta.decoded_frames(latent) == frames
    assert full_meta.latent_size(frames, 512, 512) == (latent, 64, 64)


@pytest.mark.parametrize("frames", [0, 2, 4, 64, 66, 220])
def test_bad_frame_counts(full_meta: CausalVAE, frames: int) -> None:
    with pytest.raises(ValueError, match=r"1 \+ 4 \* k.*multiple of 4"):
        full_meta.latent_frames(frames)


def test_bad_inputs(tiny: CausalVAE) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny.encode(_video(8))
    with pytest.raises(ValueError, match="channels"):
        tiny.decode(torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        tiny.decode(torch.zeros(4, 2, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        tiny.decoded_frames(0)


# -- encode / decode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_decode_shapes(tiny: CausalVAE, frames: int) -> None:
    x = _video(frames, 20, 28)  # not multiples of 8: latent 2x3, decoded 16x24
    z = tiny.encode(x)
    assert tuple(z.shape) == (1, 4, tiny.latent_frames(frames), 2, 3)
    y = tiny.decode(z)
    assert tuple(y.shape) == (1, 3, frames, 16, 24) and torch.isfinite(y).all()
    assert tuple(tiny(x).shape) == (1, 3, frames, 16, 24)


def test_sampling_is_seeded(tiny: CausalVAE) -> None:
    x = _video(5)
    a = tiny.encode(x, generator=torch.Generator().manual_seed(3), sample=True)
    b = tiny.encode(x, generator=torch.Generator().manual_seed(3), sample=True)
    mean = tiny.encode(x)
    assert torch.equal(a, b) and torch.equal(mean, tiny.encode(x, sample=False))
    assert not torch.allclose(a, mean)


# -- causality ------------------------------------------------------------------------------------------


def test_blocks_are_causal() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 5, 6)
    later = x.clone()
    later[:, :, 3:] += 1.0
    with torch.no_grad():
        conv = CausalConv3d(4, 4, 3, spatial_padding=1)
        y, y2 = conv(x), conv(later)  # frame t reads frames t-2..t (first frame replicated in front)
        assert torch.equal(y[:, :, :3], y2[:, :, :3]) and not torch.allclose(y[:, :, 3], y2[:, :, 3])
        assert torch.allclose(conv(x[:, :, :1]), y[:, :, :1])  # one frame = an image
        down = TimeDownsampleRes2x(4)
        y, y2 = down(x), down(later)  # 9 -> 5 frames; output j reads frames 2j-2..2j
        assert y.shape[2] == 5
        assert torch.equal(y[:, :, :2], y2[:, :, :2]) and not torch.allclose(y[:, :, 2], y2[:, :, 2])
        up = TimeUpsampleRes2x(4)
        y, y2 = up(x), up(later)  # 9 -> 17 frames; output 0 is input 0 mixed with a causal conv of it
        assert y.shape[2] == 17
        assert torch.equal(y[:, :, :1], y2[:, :, :1])
        assert up(x[:, :, :1]).shape[2] == 1


class _PerFrameNorm(nn.Module):
    """A GroupNorm applied to each frame separately (test helper: makes the network strictly causal)."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return self.norm(x)
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _frame_local(model: CausalVAE) -> CausalVAE:
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, _PerFrameNorm(child))
    return model


def test_convolution_graph_is_causal(tiny: CausalVAE) -> None:
    # With frame-local norms the network is strictly causal: latent frame j sees video frames <= 4j,
    # decoded frame 0 sees latent frame 0 only.
    model = _frame_local(tiny)
    x = _video(13)
    for first_changed in (1, 5):
        x2 = x.clone()
        x2[:, :, first_changed:] = -x2[:, :, first_changed:]
        z, z2 = model.encode(x), model.encode(x2)
        clean = (first_changed - 1) // 4 + 1  # latent frames that see only unchanged frames
        torch.testing.assert_close(z[:, :, :clean], z2[:, :, :clean], rtol=0, atol=1e-6)
        assert not torch.allclose(z[:, :, clean], z2[:, :, clean], atol=1e-4)
    lat = _latent(4, 2, 3)
    lat2 = lat.clone()
    lat2[:, :, 1:] += 1.0
    y, y2 = model.decode(lat), model.decode(lat2)
    torch.testing.assert_close(y[:, :, :1], y2[:, :, :1], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, :, 1], y2[:, :, 1], atol=1e-4)


def test_group_norm_couples_all_frames(tiny: CausalVAE) -> None:
    # The real model (as the reference): GroupNorm statistics of the 3D blocks span all frames, so a
    # change of later frames also moves the first latent frame and the first decoded frame.
    x = _video(9)
    x2 = x.clone()
    x2[:, :, 5:] = -x2[:, :, 5:]
    assert not torch.allclose(tiny.encode(x)[:, :, 0], tiny.encode(x2)[:, :, 0], atol=1e-4)
    lat = _latent(3, 2, 3)
    lat2 = lat.clone()
    lat2[:, :, 2] += 1.0
    assert not torch.allclose(tiny.decode(lat)[:, :, 0], tiny.decode(lat2)[:, :, 0], atol=1e-4)


# -- tiling ---------------------------------------------------------------------------------------------


def _reference_chunks(length: int, tile: int) -> list[tuple[int, int]]:
    """Chunks start every tile - 1 frames; the last start is only used if the chunk before stops short."""
    starts = range(0, length, tile - 1)
    return [(s, min(s + tile, length)) for s in starts if s == 0 or s < length - 1]


@pytest.mark.parametrize("length,tile", [(17, 8), (56, 8), (8, 8), (9, 8), (15, 8), (5, 8), (6, 3), (10, 4), (22, 8)])
def test_time_chunks(length: int, tile: int) -> None:
    chunks = time_chunks(length, tile)
    assert chunks == _reference_chunks(length, tile)
    assert chunks[0][0] == 0 and chunks[-1][1] == length
    assert all(b - a <= tile for a, b in chunks)
    assert all(chunks[i + 1][0] == chunks[i][1] - 1 for i in range(len(chunks) - 1))  # one shared frame
    if length == 17:
        assert chunks == [(0, 8), (7, 15), (14, 17)]  # 29 + 28 + 8 = 65 frames
    if length == 56:
        assert len(chunks) == 8 and chunks[-1] == (49, 56)  # 29 + 6 * 28 + 24 = 221 frames


def _small_tiles(model: CausalVAE, latent: int = 4, frames: int = 3) -> CausalVAE:
    """``model`` with 4-latent-pixel tiles (stride 3, blend 8 pixels, keep 24) and 3-frame time chunks."""
    model = copy.deepcopy(model)
    model.tile_latent_min_size, model.tile_latent_min_size_t, model.tile_overlap_factor = latent, frames, 0.25
    model.tile_sample_min_size, model.tile_sample_min_size_t = 8 * latent, 1 + 4 * (frames - 1)
    return model


def _local_decoder(z: torch.Tensor) -> torch.Tensor:
    """A stand-in decoder that is local in space and causal-local in time: pixel (8y + i, 8x + j) of frame
    4t - k (k = 0..3; frame 0 for t = 0) depends only on latent (t, y, x)."""
    phase = torch.arange(64, dtype=z.dtype).reshape(1, 1, 1, 8, 8) / 64
    img = F.interpolate(z[:, :3], scale_factor=(1, 8, 8), mode="nearest") + phase.repeat(
        1, 1, 1, z.shape[3], z.shape[4]
    )
    first, rest = img[:, :, :1], img[:, :, 1:]
    steps = torch.arange(4, dtype=z.dtype).reshape(1, 1, 1, 4, 1, 1) / 4
    rest = (rest.unsqueeze(3) + steps).flatten(2, 3)  # each latent frame t >= 1 -> 4 frames
    return torch.cat([first, rest], dim=2)


def test_tiling_geometry_is_exact(tiny: CausalVAE) -> None:
    # With a decoder that is local in space and time, tiled decode equals untiled decode: the chunks, the
    # dropped duplicate frames, the blends (of equal values) and the crops line up pixel for pixel.
    model = _small_tiles(tiny)
    model._decode_tile = _local_decoder  # type: ignore[method-assign]
    z = _latent(6, 7, 9)  # chunks (0,3) (2,5) (4,6); 3 x 3 spatial tiles of 4 latent pixels, stride 3
    whole = model.decode(z, tiled=False)
    assert tuple(whole.shape) == (1, 3, 21, 56, 72)
    torch.testing.assert_close(model.decode(z), whole, rtol=0, atol=1e-6)


def _local_encoder(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for ``quant_conv(encoder(x))``: latent (t, y, x) = mean of the 8x8 block of frame 4t."""
    pooled = F.avg_pool3d(x[:, :, ::4], (1, 8, 8))
    return torch.cat([pooled, -pooled, 2 * pooled[:, :2]], dim=1)  # 8 channels: mean | logvar


def test_tiled_encode_geometry_is_exact(tiny: CausalVAE) -> None:
    model = _small_tiles(tiny)  # 32-pixel tiles (stride 24, blend 1 latent pixel), 9-frame chunks
    model._moments = _local_encoder  # type: ignore[method-assign]
    x = _video(21, 56, 72)
    torch.testing.assert_close(model.encode(x, tiled=True), model.encode(x), rtol=0, atol=1e-6)


def _reference_tiled_decode(model: CausalVAE, z: torch.Tensor) -> torch.Tensor:
    """The official tiled decode spelled out: decode every chunk x tile, blend each tile in place with its
    (already blended) upper then left neighbour, crop, concatenate; later chunks lose their first frame."""
    tile, overlap = model.tile_latent_min_size, model.tile_overlap_factor
    out_tile = 8 * tile
    stride, blend = int(tile * (1 - overlap)), int(out_tile * overlap)
    keep = out_tile - blend
    pieces = []
    for k, (t0, t1) in enumerate(_reference_chunks(z.shape[2], model.tile_latent_min_size_t)):
        chunk = z[:, :, t0:t1]
        rows = [
            [
                model.decoder(model.post_quant_conv(chunk[..., i : i + tile, j : j + tile]))
                for j in range(0, chunk.shape[4], stride)
            ]
            for i in range(0, chunk.shape[3], stride)
        ]
        for i, row in enumerate(rows):
            for j, cur in enumerate(row):
                if i > 0:
                    above = rows[i - 1][j]
                    n = min(above.shape[3], cur.shape[3], blend)
                    for y in range(n):
                        cur[:, :, :, y] = above[:, :, :, y - n] * (1 - y / n) + cur[:, :, :, y] * (y / n)
                if j > 0:
                    left = row[j - 1]
                    n = min(left.shape[4], cur.shape[4], blend)
                    for x in range(n):
                        cur[..., x] = left[..., x - n] * (1 - x / n) + cur[..., x] * (x / n)
        decoded = torch.cat([torch.cat([c[..., :keep, :keep] for c in row], dim=4) for row in rows], dim=3)
        pieces.append(decoded if k == 0 else decoded[:, :, 1:])
    return torch.cat(pieces, dim=2)


def test_tiled_decode_matches_reference_procedure(tiny: CausalVAE) -> None:
    model = _small_tiles(tiny)
    z = _latent(6, 7, 9)
    with torch.no_grad():
        expected = _reference_tiled_decode(model, z)
    got = model.decode(z)
    assert got.shape == expected.shape == (1, 3, 21, 56, 72)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_tiled_decode_is_not_the_untiled_decode(tiny: CausalVAE) -> None:
    # What does hold: a latent within one tile is decoded whole (identical); with frame-local norms the
    # first time chunk equals the untiled decode except its last three frames (the time upsampling reads
    # one latent frame ahead), and later chunks differ (their causal context is cut). With the real
    # GroupNorms, per-chunk/per-tile statistics, tile-border zero padding and the per-frame attention make
    # tiled and untiled decodes differ everywhere; for these random 4-pixel tiles by ~100% RMS. There is no
    # small tolerance that holds in general -- the official pipeline's output is the tiled one.
    model = _small_tiles(tiny, latent=4, frames=4)
    small = _latent(4, 4, 4)
    torch.testing.assert_close(model.decode(small), model.decode(small, tiled=False), rtol=0, atol=0)
    causal = _frame_local(model)
    z = _latent(10, 3, 3)  # time tiling only: chunks (0,4) (3,7) (6,10); 3 x 3 latent pixels: one tile
    tiled, whole = causal.decode(z), causal.decode(z, tiled=False)
    # float32 convolutions over a chunk and over the whole sum in orders that differ with the CPU's kernels
    torch.testing.assert_close(tiled[:, :, :10], whole[:, :, :10], rtol=0, atol=2e-5)
    assert not torch.allclose(tiled[:, :, 10:13], whole[:, :, 10:13], atol=1e-3)
    assert not torch.allclose(tiled[:, :, 13:], whole[:, :, 13:], atol=1e-3)
    tiled, whole = model.decode(z), model.decode(z, tiled=False)
    assert tiled.shape == whole.shape and not torch.allclose(tiled[:, :, :10], whole[:, :, :10], atol=1e-3)


def _max_activations(model: CausalVAE, run: Callable[[], torch.Tensor]) -> tuple[int, list[tuple[int, ...]]]:
    """Largest output (elements) of any decoder submodule during ``run``, and the decoder input shapes."""
    largest = [0]
    inputs: list[tuple[int, ...]] = []

    def record(_module: nn.Module, _args: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    handles = [m.register_forward_hook(record) for m in model.decoder.modules()]
    handles.append(model.decoder.register_forward_pre_hook(lambda _m, args: inputs.append(tuple(args[0].shape))))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return largest[0], inputs


def test_tiled_decode_memory_is_bounded(tiny: CausalVAE) -> None:
    model = _small_tiles(tiny, latent=4, frames=4)
    z = _latent(10, 7, 7)
    bound, _ = _max_activations(model, lambda: model.decode(_latent(4, 4, 4)))  # one full tile
    largest, inputs = _max_activations(model, lambda: model.decode(z))
    assert len(inputs) == 3 * 3 * 3  # 3 time chunks x (3 x 3) tiles (starts 0, 3, 6)
    assert all(t <= 4 and h <= 4 and w <= 4 for _, _, t, h, w in inputs)
    assert largest <= bound
    untiled, _ = _max_activations(model, lambda: model.decode(z, tiled=False))
    assert untiled > 5 * bound  # 37 x 56 x 56 vs 13 x 32 x 32 output pixels


def test_bad_tile_settings_are_refused(tiny: CausalVAE) -> None:
    model = _small_tiles(tiny, latent=6)  # stride int(4.5) = 4 latent pixels, but keeps 48 - 12 = 36 pixels
    with pytest.raises(ValueError, match="tile"):
        model.decode(_latent(2, 8, 8))


# -- checkpoint folder ----------------------------------------------------------------------------------


def test_tiny_checkpoint_layout(tiny_dir: Path) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in tiny_dir.iterdir()) == ["config.json", WEIGHTS_FILE]
    assert WEIGHTS_FILE == "diffusion_pytorch_model.safetensors"
    config = json.loads((tiny_dir / "config.json").read_text())
    assert set(config) == set(OFFICIAL_CONFIG) | {"norm_num_groups"}
    for key, value in OFFICIAL_CONFIG.items():
        if key not in ("hidden_size", "num_res_blocks"):
            assert config[key] == value, key
    assert config["hidden_size"] == 8
    with safe_open(str(tiny_dir / WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    with torch.device("meta"):
        full = set(CausalVAE.from_config(OFFICIAL_CONFIG).state_dict())
    assert keys == full  # same key set as the full-size model


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_causal_vae(tmp_path / "a", seed=5)
    b = write_tiny_causal_vae(tmp_path / "b", seed=5)
    c = write_tiny_causal_vae(tmp_path / "c", seed=6)
    for name in ("config.json", WEIGHTS_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / WEIGHTS_FILE).read_bytes() != (c / WEIGHTS_FILE).read_bytes()
    write_tiny_causal_vae(a, seed=6)  # replacing an earlier CausalVAE checkpoint is fine
    assert (a / WEIGHTS_FILE).read_bytes() == (c / WEIGHTS_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        write_tiny_causal_vae(a, seed=5, overwrite=False)


def test_writer_refuses_foreign_folders(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        write_tiny_causal_vae(other)
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(FileExistsError, match="refusing"):
        write_tiny_causal_vae(other)
    assert (other / "keep.txt").read_text() == "x"


def test_from_pretrained_equals_in_memory(tiny_dir: Path, tiny: CausalVAE) -> None:
    loaded = CausalVAE.from_pretrained(tiny_dir)
    assert not loaded.training and loaded.dtype == torch.float32
    ref = tiny.state_dict()
    got = loaded.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    x = _video(5)
    torch.testing.assert_close(loaded.encode(x), tiny.encode(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_pretrained_low_precision(tiny_dir: Path, dtype: torch.dtype) -> None:
    model = CausalVAE.from_pretrained(tiny_dir, dtype=dtype)
    assert model.dtype == dtype
    z = model.encode(_video(5), generator=torch.Generator().manual_seed(0), sample=True)
    y = model.decode(z)
    assert z.dtype == y.dtype == dtype and tuple(y.shape) == (1, 3, 5, 16, 24)


def test_bin_weights_load(tmp_path: Path, tiny: CausalVAE) -> None:
    from safetensors.torch import load_file

    folder = write_tiny_causal_vae(tmp_path / "vae", seed=0)
    state = load_file(str(folder / WEIGHTS_FILE))
    (folder / WEIGHTS_FILE).unlink()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    loaded = CausalVAE.from_pretrained(folder)
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in loaded.state_dict().items())


def _rewrite(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / WEIGHTS_FILE
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_missing_key_is_named(tmp_path: Path) -> None:
    folder = write_tiny_causal_vae(tmp_path / "vae", seed=0)
    key = "decoder.up.2.time_upsample.mix_factor"
    _rewrite(folder, lambda s: s.pop(key))
    with pytest.raises(CheckpointMismatchError, match="time_upsample.mix_factor") as info:
        CausalVAE.from_pretrained(folder)
    assert info.value.missing == [key]


def test_unexpected_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    folder = write_tiny_causal_vae(tmp_path / "vae", seed=0)

    def edit(state: dict[str, torch.Tensor]) -> None:
        state["encoder.down.0.time_downsample.mix_factor"] = torch.zeros(1)
        state["encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3, 3)  # a 3D conv_in (v1.0 layout)

    _rewrite(folder, edit)
    with pytest.raises(CheckpointMismatchError) as info:
        CausalVAE.from_pretrained(folder)
    assert info.value.unexpected == ["encoder.down.0.time_downsample.mix_factor"]
    assert len(info.value.mismatched) == 1 and info.value.mismatched[0].startswith("encoder.conv_in.weight:")
    assert "[8, 3, 3, 3, 3]" in str(info.value)


def test_training_loss_keys_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_tiny_causal_vae(tmp_path / "vae", seed=0)
    _rewrite(
        folder, lambda s: s.update({"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2)})
    )
    with caplog.at_level(logging.INFO, logger="videosys.models.weights"):
        CausalVAE.from_pretrained(folder)
    assert "loss.logvar" in caplog.text
