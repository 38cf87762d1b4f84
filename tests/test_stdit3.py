"""Open-Sora 1.2 STDiT3: checkpoint layout (full-size keys, shapes and parameter count on the meta device),
loading tiny official-layout checkpoints, numerical parity with a deliberately naive reference written
here from the architecture facts, invariants (RoPE, position scale, timestep rounding, null caption) and
the PAB hooks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from videosys.models.opensora import stdit3 as stdit3_module
from videosys.models.opensora.stdit3 import STDiT3, STDiT3Block, STDiT3Config, spatial_pos_table
from videosys.models.weights import CheckpointMismatchError
from videosys.pab import MLPBroadcast, PABConfig, PABScheduler
from videosys.pab.config import AttentionBroadcast
from videosys.testing.tiny_stdit3 import make_stdit3, write_tiny_stdit3

TOL = dict(atol=1e-5, rtol=1e-5)
CAP = 32  # caption channels of the tiny model
MAXLEN = 16  # model_max_length of the tiny model
DEPTH = 2


@pytest.fixture(scope="module")
def model() -> STDiT3:
    return make_stdit3(seed=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_stdit3(tmp_path_factory.mktemp("stdit3") / "tiny", seed=0)


def make_inputs(
    batch: int = 2, frames: int = 3, height: int = 5, width: int = 7, lens: tuple[int, ...] = (10, 6), seed: int = 1
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    length = max(lens)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b, n in enumerate(lens[:batch]):
        mask[b, :n] = True
    return dict(
        x=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([977.3, 512.0, 40.0, 1.0][:batch]),
        y=torch.randn(batch, length, CAP, generator=g),
        mask=mask,
    )


# =========================================================================================================
# Naive reference, written from the architecture facts only (per-sample loops, packed valid text tokens,
# explicit einsum attention, its own RoPE / 2D sin-cos / unpatchify code).
# =========================================================================================================


def _lin(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _sinusoid(value: float, channels: int = 256) -> torch.Tensor:
    """[cos | sin] of value * exp(-ln(1e4) i / 128), with the reference model's float32 operation order
    (the angles reach 1000 rad, so one float32 ulp in a frequency moves them by ~1e-4)."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = torch.tensor(value, dtype=torch.float32) * freqs
    return torch.cat([ang.cos(), ang.sin()])


def _rope(x: torch.Tensor) -> torch.Tensor:
    """x [L, heads, hd]: pair (2i, 2i+1) at position p rotated by p / 10000^(2i/hd)."""
    length, _, hd = x.shape
    out = torch.empty_like(x)
    for p in range(length):
        for i in range(hd // 2):
            ang = p * (1.0 / 10000 ** (2 * i / hd))
            c, s = math.cos(ang), math.sin(ang)
            a, b = x[p, :, 2 * i], x[p, :, 2 * i + 1]
            out[p, :, 2 * i] = a * c - b * s
            out[p, :, 2 * i + 1] = b * c + a * s
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [Lq, h, d], k/v [Lk, h, d] -> [Lq, h, d]."""
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _self_attn(sd: dict, pre: str, seq: torch.Tensor, heads: int, rope: bool) -> torch.Tensor:
    length, c = seq.shape
    qkv = _lin(sd, f"{pre}.qkv", seq).reshape(length, 3, heads, c // heads)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    q, k = _rms(q, sd[f"{pre}.q_norm.weight"]), _rms(k, sd[f"{pre}.k_norm.weight"])
    if rope:
        q, k = _rope(q), _rope(k)
    return _lin(sd, f"{pre}.proj", _attend(q, k, v).reshape(length, c))


def _pos_table_naive(c: int, gh: int, gw: int, scale: float) -> torch.Tensor:
    base = round(math.sqrt(gh * gw))
    quarter = c // 4
    rows = []
    for i in range(gh):
        for j in range(gw):
            col = j / scale * (base / gw)
            row = i / scale * (base / gh)
            w = [10000.0 ** (-k / quarter) for k in range(quarter)]
            rows.append(
                [math.sin(col * wk) for wk in w]
                + [math.cos(col * wk) for wk in w]
                + [math.sin(row * wk) for wk in w]
                + [math.cos(row * wk) for wk in w]
            )
    return torch.tensor(rows, dtype=torch.float32)


@torch.no_grad()
def naive_stdit3(
    m: STDiT3,
    x: torch.Tensor,
    timestep: torch.Tensor,
    y: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    fps: float = 24.0,
    height: Optional[float] = None,
    width: Optional[float] = None,
    round_timestep: bool = True,
) -> torch.Tensor:
    cfg = m.config
    dtype = x.dtype  # float32 in the tests (float64 works too, for diagnosis)
    sd = {k: v.to(dtype) for k, v in m.state_dict().items()}
    c, heads = cfg.hidden_size, cfg.num_heads
    pt, ph, pw = cfg.patch_size
    out_c = 2 * cfg.in_channels if cfg.pred_sigma else cfg.in_channels
    bsz, cin, t0, h0, w0 = x.shape
    if mask is None:
        mask = torch.ones(y.shape[:2], dtype=torch.bool)
    mask = mask.bool()
    height = 8 * h0 if height is None else height
    width = 8 * w0 if width is None else width
    scale = math.sqrt(height * width) / cfg.input_sq_size

    # text: pack every sample's valid tokens into one sequence (as the reference does), embed, split
    lens = [int(n) for n in mask.sum(1)]
    packed = torch.cat([y[b][mask[b]] for b in range(bsz)]).to(dtype)
    packed = _lin(sd, "y_embedder.y_proj.fc2", _gelu_tanh(_lin(sd, "y_embedder.y_proj.fc1", packed)))
    starts = [sum(lens[:b]) for b in range(bsz)]

    tp_n, hp_n, wp_n = -(-t0 // pt), -(-h0 // ph), -(-w0 // pw)
    s_n = hp_n * wp_n
    pos = _pos_table_naive(c, hp_n, wp_n, scale).to(dtype)
    outs = []
    for b in range(bsz):
        ctx = packed[starts[b] : starts[b] + lens[b]]
        tv = float(timestep[b])
        if round_timestep:
            tv = float(torch.tensor(tv).to(torch.bfloat16))

        def emb(name: str, v: float) -> torch.Tensor:
            return _lin(sd, f"{name}.mlp.2", F.silu(_lin(sd, f"{name}.mlp.0", _sinusoid(v).to(dtype))))

        temb = emb("t_embedder", tv) + emb("fps_embedder", fps)
        t_mlp = _lin(sd, "t_block.1", F.silu(temb)).reshape(6, c)

        xp = torch.zeros(cin, tp_n * pt, hp_n * ph, wp_n * pw, dtype=dtype)
        xp[:, :t0, :h0, :w0] = x[b]
        patches = xp.reshape(cin, tp_n, pt, hp_n, ph, wp_n, pw).permute(1, 3, 5, 0, 2, 4, 6)
        patches = patches.reshape(tp_n * s_n, cin * pt * ph * pw)
        tok = patches @ sd["x_embedder.proj.weight"].reshape(c, -1).T + sd["x_embedder.proj.bias"]
        tok = tok + pos.repeat(tp_n, 1)  # frame-major: frame f holds rows f*S .. f*S+S-1

        for d in range(cfg.depth):
            for kind in ("spatial", "temporal"):
                pre = f"{kind}_blocks.{d}"
                sh, sc, g, sh2, sc2, g2 = sd[f"{pre}.scale_shift_table"] + t_mlp
                hmod = _layer_norm(tok) * (1 + sc) + sh
                attn = torch.empty_like(tok)
                if kind == "spatial":
                    for f in range(tp_n):
                        rows = slice(f * s_n, (f + 1) * s_n)
                        attn[rows] = _self_attn(sd, f"{pre}.attn", hmod[rows], heads, rope=False)
                else:
                    for s in range(s_n):
                        idx = torch.arange(tp_n) * s_n + s
                        attn[idx] = _self_attn(sd, f"{pre}.attn", hmod[idx], heads, rope=True)
                tok = tok + g * attn
                q = _lin(sd, f"{pre}.cross_attn.q_linear", tok).reshape(-1, heads, c // heads)
                kv = _lin(sd, f"{pre}.cross_attn.kv_linear", ctx).reshape(-1, 2, heads, c // heads)
                cross = _attend(q, kv[:, 0], kv[:, 1]).reshape(-1, c)
                tok = tok + _lin(sd, f"{pre}.cross_attn.proj", cross)
                hmod = _layer_norm(tok) * (1 + sc2) + sh2
                tok = tok + g2 * _lin(sd, f"{pre}.mlp.fc2", _gelu_tanh(_lin(sd, f"{pre}.mlp.fc1", hmod)))

        fsh, fsc = sd["final_layer.scale_shift_table"] + temb
        o = _lin(sd, "final_layer.linear", _layer_norm(tok) * (1 + fsc) + fsh)
        vid = torch.zeros(out_c, tp_n * pt, hp_n * ph, wp_n * pw, dtype=dtype)
        for n in range(o.shape[0]):
            ti, rest = divmod(n, s_n)
            hi, wi = divmod(rest, wp_n)
            for a in range(pt):
                for bb in range(ph):
                    for cc in range(pw):
                        base = ((a * ph + bb) * pw + cc) * out_c
                        vid[:, ti * pt + a, hi * ph + bb, wi * pw + cc] = o[n, base : base + out_c]
        outs.append(vid[:, :t0, :h0, :w0])
    return torch.stack(outs)


# =========================================================================================================
# Full-size layout
# =========================================================================================================


def expected_full_shapes() -> dict[str, tuple[int, ...]]:
    """The key table of the official checkpoint (every Linear with a bias)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)

    shapes["x_embedder.proj.weight"] = (1152, 4, 1, 2, 2)
    shapes["x_embedder.proj.bias"] = (1152,)
    for emb in ("t_embedder", "fps_embedder"):
        linear(f"{emb}.mlp.0", 1152, 256)
        linear(f"{emb}.mlp.2", 1152, 1152)
    linear("t_block.1", 6912, 1152)
    linear("y_embedder.y_proj.fc1", 1152, 4096)
    linear("y_embedder.y_proj.fc2", 1152, 1152)
    shapes["y_embedder.y_embedding"] = (300, 4096)
    for kind in ("spatial", "temporal"):
        for i in range(28):
            p = f"{kind}_blocks.{i}"
            linear(f"{p}.attn.qkv", 3456, 1152)
            shapes[f"{p}.attn.q_norm.weight"] = (72,)
            shapes[f"{p}.attn.k_norm.weight"] = (72,)
            linear(f"{p}.attn.proj", 1152, 1152)
            linear(f"{p}.cross_attn.q_linear", 1152, 1152)
            linear(f"{p}.cross_attn.kv_linear", 2304, 1152)
            linear(f"{p}.cross_attn.proj", 1152, 1152)
            linear(f"{p}.mlp.fc1", 4608, 1152)
            linear(f"{p}.mlp.fc2", 1152, 4608)
            shapes[f"{p}.scale_shift_table"] = (6, 1152)
    shapes["final_layer.scale_shift_table"] = (2, 1152)
    linear("final_layer.linear", 32, 1152)
    shapes["rope.freqs"] = (36,)
    return shapes


def test_full_size_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        full = STDiT3.from_config_dict(STDiT3Config().to_json_dict())
    got = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert got == expected_full_shapes()

    # Counted: every nn.Parameter except rope.freqs (the non-trainable RoPE frequencies) = 1,207,643,936.
    # rope.freqs adds 36 (all parameters: 1,207,643,972); the persistent buffer y_embedder.y_embedding
    # [300, 4096] adds 1,228,800, so the fp32 state dict holds 1,208,872,772 numbers (4.84 GB).
    params = dict(full.named_parameters())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    assert trainable == 1_207_643_936
    assert not params["rope.freqs"].requires_grad and tuple(params["rope.freqs"].shape) == (36,)
    assert sum(p.numel() for p in params.values()) == 1_207_643_936 + 36
    assert {k: tuple(v.shape) for k, v in full.named_buffers()} == {"y_embedder.y_embedding": (300, 4096)}
    assert sum(v.numel() for v in full.state_dict().values()) == 1_208_872_772
    assert full.pab_blocks() == {"spatial": 28, "temporal": 28, "cross": 56, "mlp": 28}
    assert full.out_channels == 8


def test_official_config_json_is_accepted() -> None:
    official = {
        "architectures": ["STDiT3"], "caption_channels": 4096, "class_dropout_prob": 0.1, "depth": 28,
        "drop_path": 0.0, "enable_flash_attn": True, "enable_layernorm_kernel": True,
        "enable_sequence_parallelism": False, "freeze_y_embedder": True, "hidden_size": 1152, "in_channels": 4,
        "input_size": [None, None, None], "input_sq_size": 512, "mlp_ratio": 4.0, "model_max_length": 300,
        "model_type": "STDiT3", "num_heads": 16, "only_train_temporal": False, "patch_size": [1, 2, 2],
        "pred_sigma": True, "qk_norm": True, "skip_y_embedder": False, "torch_dtype": "float32",
        "transformers_version": "4.39.3", "some_future_key": 1,
    }
    cfg = STDiT3Config.from_json_dict(official)
    flags = dict(enable_flash_attn=True, enable_layernorm_kernel=True, freeze_y_embedder=True)
    assert cfg == STDiT3Config(**flags)  # the flags are carried but change nothing
    assert cfg.patch_size == (1, 2, 2) and cfg.head_dim == 72 and cfg.out_channels == 8


@pytest.mark.parametrize(
    "override, field",
    [
        ({"patch_size": [2, 2]}, "patch_size"),
        ({"patch_size": [1, 0, 2]}, "patch_size"),
        ({"hidden_size": 1150}, "hidden_size"),
        ({"hidden_size": 48, "num_heads": 16}, "hidden_size"),  # head_dim 3: odd
        ({"skip_y_embedder": True}, "skip_y_embedder"),
        ({"depth": 0}, "depth"),
        ({"model_type": "Latte"}, "model_type"),
        ({"input_sq_size": -1}, "input_sq_size"),
    ],
)
def test_bad_config_values_name_the_field(override: dict[str, Any], field: str) -> None:
    data = {**STDiT3Config().to_json_dict(), **override}
    with pytest.raises(ValueError, match=field):
        STDiT3Config.from_json_dict(data)


# =========================================================================================================
# Tiny checkpoints
# =========================================================================================================


def test_tiny_checkpoint_layout_and_determinism(ckpt: Path, tmp_path: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["STDiT3"] and cfg["model_type"] == "STDiT3" and cfg["torch_dtype"] == "float32"
    assert set(STDiT3Config().to_json_dict()) <= set(cfg)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    state = load_file(str(ckpt / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert "y_embedder.y_embedding" in state and "rope.freqs" in state

    again = write_tiny_stdit3(tmp_path / "again", seed=0)
    other = write_tiny_stdit3(tmp_path / "other", seed=1)
    for name in ("config.json", "model.safetensors"):
        assert (again / name).read_bytes() == (ckpt / name).read_bytes()
    assert (other / "model.safetensors").read_bytes() != (ckpt / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        write_tiny_stdit3(again, seed=0, overwrite=False)


def test_from_pretrained_matches_in_memory_model(ckpt: Path, model: STDiT3) -> None:
    loaded = STDiT3.from_pretrained(ckpt)
    assert not loaded.training
    assert not loaded.rope.freqs.requires_grad
    x = make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**x), model(**x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("mutation", ["missing", "renamed"])
def test_mismatched_checkpoint_names_the_key(ckpt: Path, tmp_path: Path, mutation: str) -> None:
    folder = tmp_path / mutation
    folder.mkdir()
    (folder / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    state = load_file(str(ckpt / "model.safetensors"))
    key = "temporal_blocks.1.cross_attn.kv_linear.weight"
    value = state.pop(key)
    if mutation == "renamed":
        state["temporal_blocks.1.cross_attn.kv.weight"] = value
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"temporal_blocks\.1\.cross_attn\.kv_linear\.weight") as err:
        STDiT3.from_pretrained(folder)
    assert err.value.missing == [key]
    if mutation == "renamed":
        assert err.value.unexpected == ["temporal_blocks.1.cross_attn.kv.weight"]


def test_bf16_load(ckpt: Path, model: STDiT3) -> None:
    m16 = STDiT3.from_pretrained(ckpt, dtype=torch.bfloat16)
    assert {t.dtype for t in m16.state_dict().values()} == {torch.bfloat16}
    x = make_inputs()
    with torch.no_grad():
        out16 = m16(**x)
        out32 = model(**x)
    assert out16.dtype == torch.float32 and out16.shape == out32.shape
    assert torch.isfinite(out16).all()
    rel = (out16 - out32).norm() / out32.norm()
    assert rel < 0.05, float(rel)


# =========================================================================================================
# Parity with the naive reference (fp32, CPU)
# =========================================================================================================


@pytest.mark.parametrize(
    "frames, height, width, lens",
    [
        (3, 5, 7, (10, 6)),  # prompts of different lengths; odd latent H/W: padding + crop
        (1, 4, 6, (7, 7)),  # a single frame (image); common prefix: no mask
        (4, 6, 4, (3, 12)),
    ],
)
def test_parity_with_naive_reference(
    model: STDiT3, frames: int, height: int, width: int, lens: tuple[int, int]
) -> None:
    x = make_inputs(frames=frames, height=height, width=width, lens=lens)
    with torch.no_grad():
        got = model(**x, fps=24, height=8 * height + 3, width=8 * width - 1)
    expected = naive_stdit3(model, **x, fps=24.0, height=8 * height + 3, width=8 * width - 1)
    assert got.shape == (2, 8, frames, height, width)
    torch.testing.assert_close(got, expected, **TOL)


def test_parity_with_holes_in_the_mask_and_other_fps(model: STDiT3) -> None:
    """The reference selects valid tokens by the mask wherever they are (masked_select), not only a prefix."""
    x = make_inputs(lens=(9, 9))
    x["mask"][0, 2] = False
    x["mask"][1, 5:7] = False
    with torch.no_grad():
        got = model(**x, fps=torch.tensor([30.0, 30.0]))
    torch.testing.assert_close(got, naive_stdit3(model, **x, fps=30.0), **TOL)


def test_parity_without_rounding_and_with_a_non_default_patch() -> None:
    m = make_stdit3(seed=3, patch_size=(2, 2, 2), pred_sigma=False, round_timestep=False)
    x = make_inputs(frames=3, height=5, width=4, lens=(5, 8))
    with torch.no_grad():
        got = m(**x)
    assert got.shape == (2, 4, 3, 5, 4)
    torch.testing.assert_close(got, naive_stdit3(m, **x, round_timestep=False), **TOL)


# =========================================================================================================
# Invariants
# =========================================================================================================


def test_rope_only_on_temporal_qk(model: STDiT3, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = stdit3_module.apply_rotary

    def spy(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return real(t, cos, sin)

    monkeypatch.setattr(stdit3_module, "apply_rotary", spy)
    x = make_inputs(frames=3, height=4, width=6)
    with torch.no_grad():
        model(**x)
    # q and k of each temporal block: [B*S, heads, T, head_dim] with S = 2*3
    assert calls == [(2 * 6, 4, 3, 16)] * (2 * DEPTH)

    # Functionally: spatial attention is permutation-equivariant (no positions), temporal is not.
    g = torch.Generator().manual_seed(0)
    seq = torch.randn(3, 5, 64, generator=g)
    perm = torch.tensor([4, 0, 3, 1, 2])
    spatial, temporal = model.spatial_blocks[0].attn, model.temporal_blocks[0].attn
    rope = model.rope.cos_sin(5)
    with torch.no_grad():
        torch.testing.assert_close(spatial(seq[:, perm]), spatial(seq)[:, perm], **TOL)
        assert not torch.allclose(temporal(seq[:, perm], rope=rope), temporal(seq, rope=rope)[:, perm], atol=1e-3)
        torch.testing.assert_close(temporal(seq[:, perm]), temporal(seq)[:, perm], **TOL)


def test_rope_freqs_and_tables() -> None:
    m = make_stdit3()
    expected = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(m.rope.freqs.detach(), expected)
    cos, sin = m.rope.cos_sin(4)
    ang = torch.arange(4.0)[:, None] * expected.repeat_interleave(2)[None, :]
    torch.testing.assert_close(cos, ang.cos())
    torch.testing.assert_close(sin, ang.sin())


def test_loaded_rope_freqs_are_used(ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "rope"
    folder.mkdir()
    (folder / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    state = load_file(str(ckpt / "model.safetensors"))
    state["rope.freqs"] = state["rope.freqs"] * 0.5
    save_file(state, str(folder / "model.safetensors"))
    base, changed = STDiT3.from_pretrained(ckpt), STDiT3.from_pretrained(folder)
    with torch.no_grad():
        assert not torch.allclose(base(**make_inputs(frames=3)), changed(**make_inputs(frames=3)))
        assert torch.equal(base(**make_inputs(frames=1)), changed(**make_inputs(frames=1)))  # one frame: no RoPE


def test_position_table_formula_and_pixel_scale(model: STDiT3) -> None:
    for gh, gw, scale in ((3, 4, 1.0), (5, 2, 0.4375), (1, 7, 2.5)):
        torch.testing.assert_close(spatial_pos_table(64, gh, gw, scale), _pos_table_naive(64, gh, gw, scale), **TOL)
    # first half of the channels follows the column, the second half the row
    table = spatial_pos_table(64, 3, 4, 1.0).reshape(3, 4, 64)
    assert torch.equal(table[0, :, :32], table[2, :, :32]) and torch.equal(table[:, 0, 32:], table[:, 3, 32:])

    x = make_inputs(height=4, width=6)
    with torch.no_grad():
        default = model(**x)
        same = model(**x, height=32, width=48)  # default = 8x latent
        other = model(**x, height=240, width=426)
    assert torch.equal(default, same)
    assert not torch.allclose(default, other)


def test_timestep_rounding() -> None:
    rounded = make_stdit3(seed=0)
    exact = make_stdit3(seed=0, round_timestep=False)
    x = make_inputs(batch=1, lens=(5,))
    with torch.no_grad():
        a = rounded(**{**x, "timestep": torch.tensor([977.3])})
        b = rounded(**{**x, "timestep": torch.tensor([976.0])})
        c = exact(**{**x, "timestep": torch.tensor([977.3])})
        d = exact(**{**x, "timestep": torch.tensor([976.0])})
        e = rounded(**{**x, "timestep": 977.3})  # a plain number works too
    assert torch.equal(a, b) and torch.equal(a, e)
    assert not torch.allclose(c, d)
    assert torch.equal(b, d)  # 976 is a bf16 value: rounding leaves it unchanged


def test_null_caption_is_the_unconditional_branch(model: STDiT3) -> None:
    """The unconditional input is y_embedding cut by the prompt's mask: a truncated table with the prompt's
    mask, and the full table with the mask padded by False, give the same output."""
    x = make_inputs(lens=(10, 6))
    mask = x["mask"]
    null = model.null_caption
    assert null.shape == (MAXLEN, CAP) and null is model.y_embedder.y_embedding
    cut = null[: mask.shape[1]].expand(2, -1, -1)
    full = null.expand(2, -1, -1)
    full_mask = torch.zeros(2, MAXLEN, dtype=torch.bool)
    full_mask[:, : mask.shape[1]] = mask
    with torch.no_grad():
        a = model(x["x"], x["timestep"], cut, mask)
        b = model(x["x"], x["timestep"], full, full_mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a, naive_stdit3(model, x["x"], x["timestep"], cut, mask), **TOL)
    # CFG batching: [cond, uncond] in one batch equals the two separately
    xb = make_inputs(batch=1, lens=(6,))
    y2 = torch.cat([xb["y"], null[None, :6]])
    with torch.no_grad():
        both = model(xb["x"].repeat(2, 1, 1, 1, 1), xb["timestep"].repeat(2), y2, xb["mask"].repeat(2, 1))
        uncond = model(xb["x"], xb["timestep"], null[None, :6], xb["mask"])
    # a batch of 2 takes other GEMM kernels than a batch of 1: fp32 rounding differs by ~1e-6 of the scale
    torch.testing.assert_close(both[1:], uncond, atol=1e-5, rtol=1e-5)


def test_learned_sigma_channels() -> None:
    x = make_inputs(frames=2, height=4, width=4)
    with torch.no_grad():
        assert make_stdit3(pred_sigma=True)(**x).shape[1] == 8
        assert make_stdit3(pred_sigma=False)(**x).shape[1] == 4


def test_text_mask_handling(model: STDiT3) -> None:
    x = make_inputs(lens=(6, 6))
    padded_y = torch.cat([x["y"], torch.randn(2, 4, CAP)], dim=1)
    padded_mask = torch.cat([x["mask"], torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    text, key_mask = model._text(padded_y, padded_mask, 2, torch.float32)
    assert key_mask is None and text.shape == (2, 6, 64)  # common prefix: truncated, no mask
    _, key_mask = model._text(padded_y, padded_mask.int(), 2, torch.float32)
    assert key_mask is None
    with torch.no_grad():
        a = model(x["x"], x["timestep"], padded_y, padded_mask.long())
        b = model(x["x"], x["timestep"], x["y"], None)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    lens_mask = make_inputs(lens=(6, 3))["mask"]
    _, key_mask = model._text(x["y"], lens_mask, 2, torch.float32)
    assert key_mask is not None and key_mask.shape == (2, 6)

    empty = x["mask"].clone()
    empty[1] = False
    with pytest.raises(ValueError, match="no valid text token"):
        model(x["x"], x["timestep"], x["y"], empty)
    with pytest.raises(ValueError, match="0/1"):
        model(x["x"], x["timestep"], x["y"], x["mask"].float() * 2)
    with pytest.raises(ValueError, match="mask must be"):
        model(x["x"], x["timestep"], x["y"], x["mask"][:, :3])
    with pytest.raises(ValueError, match="y must be"):
        model(x["x"], x["timestep"], x["y"][..., :5], x["mask"])


# =========================================================================================================
# PAB hooks
# =========================================================================================================


class Recorder:
    """A stand-in PAB run: records every routed module (kind, site, block) and its output, and computes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.outputs: dict[tuple[str, str, int], torch.Tensor] = {}

    def compute_or_broadcast(self, kind: str, block: int, fn: Callable[[], Any], site: str = "") -> Any:
        out = fn()
        self.calls.append((kind, site, block))
        self.outputs[(kind, site, block)] = out
        return out

    def add_or_broadcast(self, kind: str, block: int, residual: torch.Tensor | Callable[[], torch.Tensor],
                         fn: Callable[[bool], Any], site: str = "") -> torch.Tensor:
        total, out = fn(True)
        self.calls.append((kind, site, block))
        self.outputs[(kind, site, block)] = out
        return total


class Replayer:
    """Returns recorded outputs instead of computing (what a broadcast of every module does)."""

    def __init__(self, outputs: dict[tuple[str, str, int], torch.Tensor]) -> None:
        self.outputs = outputs

    def compute_or_broadcast(self, kind: str, block: int, fn: Callable[[], Any], site: str = "") -> Any:
        return self.outputs[(kind, site, block)]

    def add_or_broadcast(self, kind: str, block: int, residual: torch.Tensor | Callable[[], torch.Tensor],
                         fn: Callable[[bool], Any], site: str = "") -> torch.Tensor:
        # as PABRun: the residual may come as a function that makes it (STDiT3's MLP: x + cross)
        return (residual() if callable(residual) else residual) + self.outputs[(kind, site, block)]


def _count_module_calls(m: STDiT3) -> tuple[dict[str, int], list[Any]]:
    counts = {"attn": 0, "cross": 0, "mlp": 0}
    handles = []

    def bump(name: str) -> Callable[..., None]:
        return lambda *_: counts.__setitem__(name, counts[name] + 1)

    for blk in (*m.spatial_blocks, *m.temporal_blocks):
        handles.append(blk.attn.register_forward_hook(bump("attn")))
        handles.append(blk.cross_attn.register_forward_hook(bump("cross")))
        handles.append(blk.mlp.register_forward_hook(bump("mlp")))
    return counts, handles


def test_routing_order_kinds_sites(model: STDiT3) -> None:
    x = make_inputs()
    rec = Recorder()
    with torch.no_grad():
        plain = model(**x)
        routed = model(**x, pab=rec)  # type: ignore[arg-type]
    assert torch.equal(plain, routed)
    expected = []
    for d in range(DEPTH):
        expected += [("spatial", "", d), ("cross", "spatial", d), ("mlp", "spatial", d)]
        expected += [("temporal", "", d), ("cross", "temporal", d), ("mlp", "temporal", d)]
    assert rec.calls == expected


@pytest.mark.parametrize("temporal", [False, True])
def test_block_pieces_are_gated_outputs(model: STDiT3, temporal: bool) -> None:
    """What PAB keeps: gate_msa * attention, the raw cross-attention, gate_mlp * mlp."""
    blk: STDiT3Block = (model.temporal_blocks if temporal else model.spatial_blocks)[1]
    b, frames, tokens, c = 2, 3, 4, 64
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, frames * tokens, c, generator=g)
    y = torch.randn(b, 5, c, generator=g)
    t_mlp = torch.randn(b, 6 * c, generator=g)
    rope = model.rope.cos_sin(frames)
    rec = Recorder()
    with torch.no_grad():
        out = blk(x, y, None, t_mlp, frames, tokens, rope, pab=rec, block=1)  # type: ignore[arg-type]
        sh, sc, gate, sh2, sc2, gate2 = (blk.scale_shift_table[None] + t_mlp.reshape(b, 6, c)).chunk(6, dim=1)
        hm = F.layer_norm(x, (c,), eps=1e-6) * (1 + sc) + sh
        if temporal:
            seqs = hm.reshape(b, frames, tokens, c).transpose(1, 2).reshape(b * tokens, frames, c)
            att = blk.attn(seqs, rope=rope).reshape(b, tokens, frames, c).transpose(1, 2).reshape(b, -1, c)
        else:
            att = blk.attn(hm.reshape(b * frames, tokens, c)).reshape(b, -1, c)
        h = x + gate * att
        cross = blk.cross_attn(h, y)
        h = h + cross
        ff = gate2 * blk.mlp(F.layer_norm(h, (c,), eps=1e-6) * (1 + sc2) + sh2)
        expected = h + ff
    site = "temporal" if temporal else "spatial"
    # 1e-5: the block modulates with one fused multiply-add (addcmul), the expectation with two ops
    assert rec.calls == [(site, "", 1), ("cross", site, 1), ("mlp", site, 1)]
    torch.testing.assert_close(rec.outputs[(site, "", 1)], gate * att, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec.outputs[("cross", site, 1)], cross, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec.outputs[("mlp", site, 1)], ff, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_broadcast_returns_the_kept_gated_outputs(model: STDiT3) -> None:
    """Call 2 broadcasts every module: its output equals running call 2 with every piece replaced by the
    call-1 output, and no attention or MLP runs."""
    cfg = PABConfig(
        spatial=AttentionBroadcast((0, 1000), 2),
        temporal=AttentionBroadcast((0, 1000), 2),
        cross=AttentionBroadcast((0, 1000), 2),
        mlp=MLPBroadcast(timesteps=(600.0,), blocks=tuple(range(DEPTH)), skip_count=1),
    )
    run = PABScheduler(cfg).new_run([600, 400])
    x1 = make_inputs(seed=1)
    x2 = {**make_inputs(seed=2), "timestep": torch.tensor([400.0, 400.0])}
    x1["timestep"] = torch.tensor([600.0, 600.0])
    rec = Recorder()
    with torch.no_grad():
        model(**x1, pab=rec)  # type: ignore[arg-type]
        replayed = model(**x2, pab=Replayer(rec.outputs))  # type: ignore[arg-type]
        counts, handles = _count_module_calls(model)
        try:
            with run:
                run.begin_call()
                first = model(**x1, pab=run)
                assert counts == {"attn": 2 * DEPTH, "cross": 2 * DEPTH, "mlp": 2 * DEPTH}
                run.begin_call()
                second = model(**x2, pab=run)
                assert counts == {"attn": 2 * DEPTH, "cross": 2 * DEPTH, "mlp": 2 * DEPTH}  # nothing ran
                assert run.cached_entries == 0
        finally:
            for hd in handles:
                hd.remove()
        full = model(**x2)
    assert torch.equal(first, model(**x1))
    assert torch.equal(second, replayed)
    assert not torch.allclose(second, full)
    blocks = model.pab_blocks()
    assert run.stats.broadcast == {"spatial": DEPTH, "temporal": DEPTH, "cross": 2 * DEPTH, "mlp": 2 * DEPTH}
    assert run.stats.as_dict() == run.plan.expected_counts(blocks, mlp_sites=model.pab_mlp_sites)


def test_pab_counts_over_a_schedule_match_the_plan(model: STDiT3) -> None:
    cfg = PABConfig.from_dict(
        {
            "window": [450, 930],
            "spatial_range": 2,
            "temporal_range": 3,
            "cross_range": 4,
            "mlp": {"timesteps": [800], "blocks": [0, 5], "skip_count": 2},
        }
    )
    timesteps = [1000, 925, 880, 800, 760, 700, 650, 600, 500, 400]
    run = PABScheduler(cfg).new_run(timesteps)
    x = make_inputs(frames=2, height=4, width=4, lens=(4, 3))
    with torch.no_grad(), run:
        for t in timesteps:
            run.begin_call()
            model(**{**x, "timestep": torch.tensor([float(t)] * 2)}, pab=run)
        assert run.cached_entries == 0
    expected = run.plan.expected_counts(model.pab_blocks(), mlp_sites=model.pab_mlp_sites)
    assert run.stats.as_dict() == expected
    assert all(expected[k]["broadcast"] > 0 for k in ("spatial", "temporal", "cross", "mlp"))


def test_disabled_pab_is_bit_identical(model: STDiT3) -> None:
    run = PABScheduler(PABConfig.disabled()).new_run([700, 500])
    x = make_inputs()
    with torch.no_grad(), run:
        for t in (700.0, 500.0):
            run.begin_call()
            ts = torch.tensor([t, t])
            assert torch.equal(model(**{**x, "timestep": ts}, pab=run), model(**{**x, "timestep": ts}))
    assert sum(run.stats.broadcast.values()) == 0
