"""Open-Sora-Plan v1.1 end to end on a tiny checkpoint written at test time: the per-length transformer
folders, PNDM's 159 calls for 150 steps, PAB counted over calls, text handling, the CLI and the bundled model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from videosys import PABConfig, RequestError, VideoSysEngine
from videosys.cli import main
from videosys.errors import VideoSysError
from videosys.pab import PABScheduler
from videosys.testing.tiny_opensora_plan import SMOKE_OVERLAY
from support import pipeline_of

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = REPO_ROOT / "models" / "opensora-plan-smoke"


class CallRecorder:
    """Wraps a transformer's forward and keeps (timestep, batch, text shape) of every call."""

    def __init__(self, transformer, monkeypatch):
        self.calls: list[dict] = []
        original = transformer.forward

        def forward(x, t, text, *args, **kwargs):
            self.calls.append({"t": float(t[0]), "x": tuple(x.shape), "text": text.clone()})
            return original(x, t, text, *args, **kwargs)

        monkeypatch.setattr(transformer, "forward", forward)


def pndm_timesteps(steps: int) -> list[float]:
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler()
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


# --------------------------------------------------------------------------- layout and loading


def test_tiny_checkpoint_layout(tiny_opensora_plan_dir):
    for name in ("5x64x64", "9x64x64", "vae", "text_encoder"):
        assert (tiny_opensora_plan_dir / name / "config.json").is_file()
    config = json.loads((tiny_opensora_plan_dir / "9x64x64" / "config.json").read_text())
    assert config["_class_name"] == "LatteT2V" and config["video_length"] == 3 and config["sample_size"] == [8, 8]
    assert (tiny_opensora_plan_dir / "text_encoder" / "spiece.model").is_file()


def test_a_checkpoint_without_transformers_is_refused(tiny_opensora_plan_dir, tmp_path):
    broken = tmp_path / "no-transformer"
    shutil.copytree(tiny_opensora_plan_dir, broken)
    for name in ("5x64x64", "9x64x64"):
        shutil.rmtree(broken / name)
    engine = VideoSysEngine("opensora-plan", weights=broken, device="cpu", progress=False)
    with pytest.raises(VideoSysError, match=r"no transformer folder.*65x512x512/"):
        engine.generate("a cat", steps=4)


def test_a_missing_length_fails_before_any_work(tiny_opensora_plan_dir, tmp_path, monkeypatch):
    partial = tmp_path / "only-5"
    shutil.copytree(tiny_opensora_plan_dir, partial)
    shutil.rmtree(partial / "9x64x64")
    engine = VideoSysEngine("opensora-plan", weights=partial, device="cpu", progress=False)
    calls = CallRecorder(pipeline_of(engine).transformer, monkeypatch)
    with pytest.raises(VideoSysError, match=r"9 frames at 64x64 need the transformer folder 9x64x64/.*5x64x64/"):
        engine.generate(["a cat", "a dog"], steps=4, frames=9)
    assert calls.calls == []  # nothing ran


# --------------------------------------------------------------------------- generation


def test_frames_shape_and_determinism(tiny_opensora_plan_engine):
    a = tiny_opensora_plan_engine.generate("a red ball", steps=4, seed=3)
    assert a.frames.shape == (5, 64, 64, 3) and a.frames.dtype == np.uint8
    b = tiny_opensora_plan_engine.generate("a red ball", steps=4, seed=3)
    c = tiny_opensora_plan_engine.generate("a red ball", steps=4, seed=4)
    assert np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, c.frames)


def test_the_transformer_follows_the_length(tiny_opensora_plan_engine):
    pipeline = pipeline_of(tiny_opensora_plan_engine)
    long = tiny_opensora_plan_engine.generate("a cat", steps=4, frames=9)
    assert long.frames.shape == (9, 64, 64, 3)
    assert pipeline.loaded_variant == (9, 64, 64) and pipeline.transformer.config.video_length == 3
    short = tiny_opensora_plan_engine.generate("a cat", steps=4, frames=5)
    assert short.frames.shape == (5, 64, 64, 3) and pipeline.transformer.config.video_length == 2


def test_150_pndm_steps_are_159_calls_and_pab_counts_calls(tiny_opensora_plan_engine, monkeypatch):
    recorder = CallRecorder(pipeline_of(tiny_opensora_plan_engine).transformer, monkeypatch)
    result = tiny_opensora_plan_engine.generate("a cat", pab="pab246")
    assert result.request.steps == 150
    timesteps = pndm_timesteps(150)
    assert len(timesteps) == 159 and [c["t"] for c in recorder.calls] == timesteps
    plan = PABScheduler(result.request.pab).plan(timesteps)
    layers = 2
    expected = plan.expected_counts({"spatial": layers, "temporal": layers, "cross": layers, "mlp": layers},
                                    mlp_sites=2)
    assert result.pab_stats == expected
    assert result.pab_stats["spatial"]["computed"] + result.pab_stats["spatial"]["broadcast"] == 159 * layers
    # the 14 MLP keys are exact PNDM timesteps at 150 steps: 14 key calls, each reused by the next 2 calls
    assert result.pab_stats["mlp"]["broadcast"] == 14 * 2 * layers * 2


def test_latents_have_the_causal_frame_count(tiny_opensora_plan_engine, monkeypatch):
    recorder = CallRecorder(pipeline_of(tiny_opensora_plan_engine).transformer, monkeypatch)
    tiny_opensora_plan_engine.generate("a cat", steps=4, frames=5)
    assert recorder.calls[0]["x"] == (2, 4, 2, 8, 8)  # CFG batch 2; (5 - 1) / 4 + 1 latent frames


def test_text_is_cut_to_the_prompt_and_the_negative_is_empty(tiny_opensora_plan_engine, monkeypatch):
    pipeline = pipeline_of(tiny_opensora_plan_engine)
    recorder = CallRecorder(pipeline.transformer, monkeypatch)
    tiny_opensora_plan_engine.generate("A Red Panda", steps=4)
    text = recorder.calls[0]["text"]
    tokens = pipeline.tokenizer(["a red panda"], return_attention_mask=True)
    assert text.shape[1] == int(sum(tokens.attention_mask[0]))  # cut to the prompt's valid tokens
    cond, uncond = pipeline.encode_text("A Red Panda", "", 7.5)
    assert uncond.shape == cond.shape  # the "" negative is cut to the prompt's length
    assert torch.equal(text[1], cond[0]) and torch.equal(text[0], uncond[0])  # CFG order [neg, pos]
    assert not torch.equal(cond, uncond)


def test_pab_off_equals_a_plan_that_never_broadcasts(tiny_opensora_plan_engine):
    off = tiny_opensora_plan_engine.generate("a cat", steps=6, seed=2, pab="none")
    never = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 1, "temporal_range": 1, "cross_range": 1})
    same = tiny_opensora_plan_engine.generate("a cat", steps=6, seed=2, pab=never)
    assert np.array_equal(off.frames, same.frames)


def test_pab_changes_output(tiny_opensora_plan_engine):
    off = tiny_opensora_plan_engine.generate("a cat", steps=30, seed=4, pab="none")
    on = tiny_opensora_plan_engine.generate("a cat", steps=30, seed=4, pab="pab579")
    assert not np.array_equal(off.frames, on.frames)
    assert on.pab_stats["spatial"]["broadcast"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"frames": 17}, "frames: 17 not allowed (allowed: 5, 9"),
        ({"height": 128, "width": 128}, "not allowed"),
        ({"resolution": "480p", "aspect": "9:16"}, "resolution"),
        ({"steps": 3}, "steps: 3 not allowed (allowed: an integer from 4 to 1000 for opensora-plan)"),
    ],
)
def test_bad_sizes_are_rejected(tiny_opensora_plan_engine, overrides, message):
    with pytest.raises(RequestError) as info:
        tiny_opensora_plan_engine.generate("a cat", **overrides)
    assert message in str(info.value)


# --------------------------------------------------------------------------- CLI and the bundled model


def test_cli_generate_with_a_local_checkpoint(tiny_opensora_plan_dir, tmp_path, capsys):
    out = tmp_path / "osp.mp4"
    code = main(["generate", "a cat", "--model", "opensora-plan", "--frames", "9", "--steps", "4",
                 "--weights", str(tiny_opensora_plan_dir), "--pab", "pab246", "--no-progress", "-o", str(out)])
    assert code == 0 and out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "(9 frames, 64x64, 24 fps)" in text and "pab        pab246" in text


def test_bundled_smoke_checkpoint():
    assert (SMOKE_DIR / "vae" / "config.json").is_file(), "run: python scripts/make_smoke_checkpoint.py"
    total = sum(p.stat().st_size for p in SMOKE_DIR.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"models/opensora-plan-smoke is {total} bytes"
    assert (SMOKE_DIR / "videosys.yaml").read_text() == SMOKE_OVERLAY
    assert {p.name for p in SMOKE_DIR.iterdir() if re.match(r"\d+x", p.name)} == {"65x128x128", "221x128x128"}


def test_bundled_smoke_is_the_default_for_65_frames(tmp_path, capsys):
    out = tmp_path / "smoke.mp4"
    assert main(["generate", "a cat", "--model", "opensora-plan", "--frames", "65", "--steps", "4",
                 "--no-progress", "-o", str(out)]) == 0
    assert "(65 frames, 128x128, 24 fps)" in capsys.readouterr().out


def test_models_lists_opensora_plan(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "opensora-plan:" in out and "LanguageBind/Open-Sora-Plan-v1.1.0 (folder root)" in out
