"""The tiny random Latte checkpoints: official layout, loadable by the libraries, deterministic, bundled copy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from videosys.testing.tiny_latte import (
    COMPONENTS,
    SMOKE_CHECKPOINT_KWARGS,
    SMOKE_OVERLAY,
    smoke_overlay,
    write_tiny_latte,
)
from videosys.testing.tokenizer import build_t5_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = REPO_ROOT / "models" / "latte-smoke"

WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "transformer": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}
EXPECTED_INDEX = {
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "LatteTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
OVERLAY = "description: test overlay\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with the default tiny sizes (seed 0) and one extra file."""
    return write_tiny_latte(tmp_path_factory.mktemp("tiny") / "latte", seed=0, extra_files={"videosys.yaml": OVERLAY})


def _weights(path: Path) -> dict[str, bytes]:
    return {name: (path / name / file).read_bytes() for name, file in WEIGHT_FILES.items()}


# --------------------------------------------------------------------------- layout


def test_official_layout(ckpt: Path) -> None:
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["_class_name"] == "LattePipeline"
    assert {k: index[k] for k in COMPONENTS} == EXPECTED_INDEX
    assert (ckpt / "scheduler" / "scheduler_config.json").is_file()
    for name, weights in WEIGHT_FILES.items():
        assert (ckpt / name / "config.json").is_file()
        assert (ckpt / name / weights).is_file()
    for file in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (ckpt / "tokenizer" / file).is_file(), file
    assert (ckpt / "videosys.yaml").read_text() == OVERLAY


def test_transformer_config_has_latte1_shape(ckpt: Path) -> None:
    config = json.loads((ckpt / "transformer" / "config.json").read_text())
    expected = {
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "num_embeds_ada_norm": 1000,
        "in_channels": 4,
        "out_channels": 8,
        "patch_size": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
        "caption_channels": 32,
        "sample_size": 16,
        "video_length": 16,
        "num_layers": 2,
    }
    assert {k: config[k] for k in expected} == expected


# --------------------------------------------------------------------------- components load back


def test_scheduler_loads_with_latte1_timesteps(ckpt: Path) -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(ckpt / "scheduler")
    assert scheduler.config.beta_schedule == "linear"
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.clip_sample is False
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(980, -1, -20))


def test_vae_loads_and_decodes_with_factor_8(ckpt: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(ckpt / "vae", low_cpu_mem_usage=False)
    assert len(vae.config.down_block_types) == 4
    assert vae.config.latent_channels == 4
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    with torch.no_grad():
        image = vae.decode(torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))).sample
    assert image.shape == (1, 3, 16, 16)
    assert torch.isfinite(image).all()


def test_tokenizer_and_text_encoder_load(ckpt: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    assert tokenizer.model_max_length == 120
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a cat").input_ids
    assert 2 <= len(ids) <= 4 and ids[-1] == 1
    prompt_ids = tokenizer("a cat playing in the snow").input_ids
    assert 2 not in prompt_ids, tokenizer.convert_ids_to_tokens(prompt_ids)

    batch = tokenizer(["a cat", "a red car driving on the road"], padding="max_length", max_length=120,
                      truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (2, 120)
    assert batch.attention_mask[0].sum().item() == len(ids)
    assert batch.input_ids[0, len(ids):].eq(0).all()

    encoder = T5EncoderModel.from_pretrained(ckpt / "text_encoder")
    assert encoder.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        hidden = encoder(batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert hidden.shape == (2, 120, 32)
    assert torch.isfinite(hidden).all()
    assert not torch.allclose(hidden[0, :2], hidden[1, :2])


def test_transformer_loads_and_depends_on_inputs(ckpt: Path) -> None:
    from diffusers import LatteTransformer3DModel

    model = LatteTransformer3DModel.from_pretrained(ckpt / "transformer", low_cpu_mem_usage=False)
    for name, param in model.named_parameters():
        assert param.abs().sum() > 0, f"{name} is all zero"

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 4, 4, generator=gen)  # diffusers needs video_length frames
    text = torch.randn(2, 5, 32, generator=gen)

    def run(text_emb: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            return model(latents, encoder_hidden_states=text_emb, timestep=torch.tensor([t]),
                         enable_temporal_attentions=True, return_dict=False)[0]

    out = run(text[:1], 500)
    assert out.shape == (1, 8, 16, 4, 4)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, run(text[1:], 500))
    assert not torch.allclose(out, run(text[:1], 20))


def test_diffusers_latte_pipeline_runs(ckpt: Path) -> None:
    """The whole folder is a valid LattePipeline checkpoint (a reference for the engine's own loader)."""
    from diffusers import LattePipeline

    pipe = LattePipeline.from_pretrained(ckpt, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a cat playing in the snow", num_inference_steps=2, video_length=1, height=128, width=128,
                  clean_caption=False, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 1, 3, 128, 128)
    assert torch.isfinite(frames).all()


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_other_seed_differs(ckpt: Path, tmp_path: Path) -> None:
    same = write_tiny_latte(tmp_path / "same", seed=0)
    other = write_tiny_latte(tmp_path / "other", seed=1)
    reference = _weights(ckpt)
    assert _weights(same) == reference
    other_weights = _weights(other)
    for name in WEIGHT_FILES:
        assert other_weights[name] != reference[name], name
    for file in ("spiece.model", "tokenizer.json"):  # one vocabulary for every weight seed
        assert (other / "tokenizer" / file).read_bytes() == (ckpt / "tokenizer" / file).read_bytes()


def test_write_is_fast(tmp_path: Path) -> None:
    write_tiny_latte(tmp_path / "warm")  # imports out of the timing
    start = time.perf_counter()
    write_tiny_latte(tmp_path / "timed", seed=3)
    assert time.perf_counter() - start < 5.0


def test_build_t5_tokenizer_is_deterministic_and_matches_sentencepiece(tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    first = build_t5_tokenizer(tmp_path / "a")
    second = build_t5_tokenizer(tmp_path / "b")
    for file in sorted(p.name for p in first.iterdir()):
        assert (first / file).read_bytes() == (second / file).read_bytes(), file

    tokenizer = AutoTokenizer.from_pretrained(first)
    processor = spm.SentencePieceProcessor(model_file=str(first / "spiece.model"))
    assert len(tokenizer) == processor.get_piece_size()
    for text in ("a cat playing in the snow", "A fluffy white dog, running on the beach!",
                 "An astronaut riding a horse on Mars", "ＦＵＬＬ width  and   spaces", "xylophone quokka"):
        assert tokenizer(text).input_ids == processor.encode(text) + [1], text


def test_extra_files_must_stay_inside(tmp_path: Path) -> None:
    for name in ("../escape.yaml", "/abs.yaml", "sub/../../escape.yaml"):
        with pytest.raises(ValueError):
            write_tiny_latte(tmp_path / "bad", extra_files={name: "x"})
    assert not (tmp_path / "bad").exists()
    nested = write_tiny_latte(tmp_path / "nested", extra_files={"conf/extra.yaml": "a: 1\n"})
    assert (nested / "conf" / "extra.yaml").read_text() == "a: 1\n"


def test_refuses_to_overwrite_without_flag(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        write_tiny_latte(ckpt)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_tiny_latte(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- bundled smoke checkpoint


def test_bundled_smoke_checkpoint() -> None:
    assert (SMOKE_DIR / "model_index.json").is_file(), "run: python scripts/make_smoke_checkpoint.py"
    total = sum(p.stat().st_size for p in SMOKE_DIR.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"models/latte-smoke is {total} bytes"
    assert (SMOKE_DIR / "videosys.yaml").read_text() == SMOKE_OVERLAY == smoke_overlay()
    for name, weights in WEIGHT_FILES.items():
        assert (SMOKE_DIR / name / weights).is_file()

    transformer = json.loads((SMOKE_DIR / "transformer" / "config.json").read_text())
    kwargs = SMOKE_CHECKPOINT_KWARGS
    assert transformer["num_attention_heads"] * transformer["attention_head_dim"] == kwargs["heads"] * kwargs["head_dim"]
    assert transformer["caption_channels"] == kwargs["caption_channels"]
    assert (transformer["sample_size"], transformer["video_length"]) == (kwargs["sample_size"], kwargs["video_length"])
    vae = json.loads((SMOKE_DIR / "vae" / "config.json").read_text())
    assert vae["block_out_channels"] == list(kwargs["vae_block_out_channels"])
