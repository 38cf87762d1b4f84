"""Open-Sora 1.2 end to end on a tiny checkpoint written at test time: sizes, CFG with the null caption,
prompt preparation, conditioning inputs, PAB counts, the CLI and the bundled smoke model."""

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
from videosys.models.opensora.stdit3 import PreparedCaption
from videosys.schedulers.rflow import RFlowSchedule
from videosys.testing.tiny_opensora import COMPONENTS, SMOKE_OVERLAY, write_tiny_opensora
from support import pipeline_of

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_DIR = REPO_ROOT / "models" / "opensora-smoke"
SMALL = {"resolution": "144p", "aspect": "9:16"}  # 144 x 256 pixels, 18 x 32 latents


class CallRecorder:
    """Wraps the transformer's forward and keeps the inputs of every call (``y``: the T5 features, also
    where a call got them as the PreparedCaption made from them; ``caption``: what the call got)."""

    def __init__(self, transformer, monkeypatch):
        self.calls: list[dict] = []
        features: dict[int, torch.Tensor] = {}
        original = transformer.forward
        original_prepare = transformer.prepare_caption

        def prepare_caption(y, mask=None):
            prepared = original_prepare(y, mask)
            features[id(prepared)] = y.clone()
            return prepared

        def forward(x, timestep, y, mask, **kwargs):
            text = features[id(y)] if isinstance(y, PreparedCaption) else y.clone()
            self.calls.append({"x": x.clone(), "t": timestep.clone(), "y": text, "caption": y,
                               "mask": None if mask is None else mask.clone(), **kwargs})
            return original(x, timestep, y, mask, **kwargs)

        monkeypatch.setattr(transformer, "forward", forward)
        monkeypatch.setattr(transformer, "prepare_caption", prepare_caption)


# --------------------------------------------------------------------------- layout


def test_tiny_checkpoint_layout_and_sizes(tiny_opensora_dir):
    for name in COMPONENTS:
        assert (tiny_opensora_dir / name / "config.json").is_file()
        assert (tiny_opensora_dir / name / "model.safetensors").is_file()
    assert (tiny_opensora_dir / "text_encoder" / "spiece.model").is_file()
    transformer = json.loads((tiny_opensora_dir / "transformer" / "config.json").read_text())
    t5 = json.loads((tiny_opensora_dir / "text_encoder" / "config.json").read_text())
    assert transformer["model_type"] == "STDiT3"
    assert transformer["caption_channels"] == t5["d_model"]
    assert transformer["model_max_length"] == 300  # rows of the null caption = T5 padding length


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an Open-Sora checkpoint"):
        write_tiny_opensora(tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_missing_component_names_the_folder(tiny_opensora_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_opensora_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(VideoSysError, match=r"missing folder\(s\) vae/"):
        VideoSysEngine("opensora", weights=broken, device="cpu")


# --------------------------------------------------------------------------- generation


def test_frames_shape_and_determinism(tiny_opensora_engine):
    a = tiny_opensora_engine.generate("a red ball bouncing", steps=2, frames=17, seed=3, **SMALL)
    assert a.frames.shape == (17, 144, 256, 3) and a.frames.dtype == np.uint8
    assert a.fps == 24 and a.model == "opensora"
    b = tiny_opensora_engine.generate("a red ball bouncing", steps=2, frames=17, seed=3, **SMALL)
    c = tiny_opensora_engine.generate("a red ball bouncing", steps=2, frames=17, seed=4, **SMALL)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_prompt_changes_the_video_and_lists_keep_order(tiny_opensora_engine):
    prompts = ["a cat", "a dog running on the beach at sunset, filmed from a drone"]
    results = tiny_opensora_engine.generate(prompts, steps=2, frames=1, seed=1, **SMALL)
    assert [r.request.prompt for r in results] == prompts
    assert not np.array_equal(results[0].frames, results[1].frames)


def test_other_aspects_and_frame_aliases(tiny_opensora_engine):
    wide = tiny_opensora_engine.generate("a cat", steps=1, frames=1, resolution="144p", aspect="16:9")
    assert wide.frames.shape == (1, 256, 144, 3)  # the reference's height:width convention
    square = tiny_opensora_engine.generate("a cat", steps=1, frames="2s", resolution="144p", aspect="1:1")
    assert square.frames.shape == (51, 192, 192, 3)
    assert square.request.frames == 51


def test_decoded_width_is_the_latent_width_times_8(tiny_opensora_engine):
    # 480p 9:16 asks for 480 x 854; the latent is 854 // 8 = 106 wide, so the video is 848 wide as in the reference
    result = tiny_opensora_engine.generate("a cat", steps=1, frames=1, resolution="480p", aspect="9:16")
    assert result.request.height == 480 and result.request.width == 854
    assert result.frames.shape == (1, 480, 848, 3)


def test_cfg_pairs_each_prompt_with_the_learned_null_caption(tiny_opensora_engine, monkeypatch):
    transformer = pipeline_of(tiny_opensora_engine).transformer
    recorder = CallRecorder(transformer, monkeypatch)
    tiny_opensora_engine.generate("a cat", steps=2, frames=1, guidance=7.0, **SMALL)
    assert len(recorder.calls) == 2
    call = recorder.calls[0]
    valid = int(pipeline_of(tiny_opensora_engine).encode_text("a cat")[1].sum())
    assert 0 < valid < 300
    # the caption comes cut to the prompt's valid tokens, once per request, with no mask (no per-call host
    # reads); the null caption is cut the same way
    y = call["y"]
    assert y.shape[:2] == (2, valid) and call["mask"] is None
    assert all(c["y"].shape[1] == valid and c["mask"] is None for c in recorder.calls)
    # ...made ready once: every call of the request gets the same PreparedCaption (its folded contexts kept)
    assert isinstance(call["caption"], PreparedCaption)
    assert all(c["caption"] is call["caption"] for c in recorder.calls)
    assert torch.equal(y[1], transformer.null_caption[:valid].to(y.dtype))
    assert not torch.equal(y[0], y[1])
    assert torch.equal(call["x"][0], call["x"][1])  # both halves see the same latent
    assert call["t"][0] == call["t"][1] == 1000.0


def test_guidance_one_runs_a_single_branch(tiny_opensora_engine, monkeypatch):
    recorder = CallRecorder(pipeline_of(tiny_opensora_engine).transformer, monkeypatch)
    tiny_opensora_engine.generate("a cat", steps=2, frames=1, guidance=1.0, **SMALL)
    assert [c["y"].shape[0] for c in recorder.calls] == [1, 1]


def test_guidance_scales_the_difference(tiny_opensora_engine):
    a = tiny_opensora_engine.generate("a cat", steps=2, frames=1, seed=2, guidance=1.0, **SMALL)
    b = tiny_opensora_engine.generate("a cat", steps=2, frames=1, seed=2, guidance=7.0, **SMALL)
    assert not np.array_equal(a.frames, b.frames)


def test_timesteps_and_conditioning_follow_the_rflow_schedule(tiny_opensora_engine, monkeypatch):
    recorder = CallRecorder(pipeline_of(tiny_opensora_engine).transformer, monkeypatch)
    request = tiny_opensora_engine.make_request("a cat", steps=5, frames=17, **SMALL)
    tiny_opensora_engine.generate("a cat", steps=5, frames=17, **SMALL)
    schedule = RFlowSchedule.create(5, request.height, request.width, request.frames)
    assert [float(c["t"][0]) for c in recorder.calls] == pytest.approx(list(schedule.timesteps))
    first = recorder.calls[0]
    assert first["x"].shape == (2, 4, 5, 18, 32)  # 17 frames -> 5 latent frames
    assert float(first["fps"][0]) == 24.0
    assert (first["height"], first["width"]) == (144.0, 256.0)  # host numbers (no read-back per call)


def test_text_gets_the_aesthetic_suffix_and_cleaning(tiny_opensora_engine, monkeypatch):
    pipeline = pipeline_of(tiny_opensora_engine)
    assert pipeline.prepare_prompt("A cat <b>jumping</b>  over http://x.com/a.png") == (
        "a cat jumping over aesthetic score: 6.5."
    )
    seen: list[str] = []
    tokenizer = pipeline.tokenizer
    monkeypatch.setattr(pipeline, "tokenizer", lambda texts, **kw: seen.extend(texts) or tokenizer(texts, **kw))
    tiny_opensora_engine.generate("A Dog", steps=1, frames=1, **SMALL)
    assert seen == ["a dog aesthetic score: 6.5."]


def test_negative_prompt_is_refused(tiny_opensora_engine):
    with pytest.raises(RequestError, match="negative_prompt"):
        tiny_opensora_engine.generate("a cat", negative_prompt="blurry")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"resolution": "1080p"}, "allowed: 144p, 240p, 360p, 480p, 720p"),
        ({"resolution": "144p", "aspect": "5:4"}, "aspect: '5:4' not allowed"),
        ({"frames": "3s"}, "'2s' (51), '4s' (102), '8s' (204), '16s' (408)"),
        ({"frames": 409}, "any integer from 1 to 408"),
    ],
)
def test_bad_sizes_name_what_is_allowed(tiny_opensora_engine, overrides, message):
    with pytest.raises(RequestError) as info:
        tiny_opensora_engine.generate("a cat", **overrides)
    assert message in str(info.value)


# --------------------------------------------------------------------------- PAB


def test_pab246_counts_follow_the_plan_on_the_rflow_schedule(tiny_opensora_engine):
    result = tiny_opensora_engine.generate("a cat", frames=1, pab="pab246", **SMALL)
    request = result.request
    assert request.steps == 30
    schedule = RFlowSchedule.create(30, request.height, request.width, request.frames)
    plan = PABScheduler(request.pab).plan(schedule.model_timesteps)
    model = pipeline_of(tiny_opensora_engine).transformer
    assert result.pab_stats == plan.expected_counts(model.pab_blocks(), mlp_sites=2)
    assert all(result.pab_stats[k]["broadcast"] > 0 for k in ("spatial", "temporal", "cross", "mlp"))


def test_pab_off_is_bit_identical_to_a_plan_that_never_broadcasts(tiny_opensora_engine):
    off = tiny_opensora_engine.generate("a cat", steps=4, frames=1, seed=2, pab="none", **SMALL)
    never = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 1, "temporal_range": 1, "cross_range": 1})
    same = tiny_opensora_engine.generate("a cat", steps=4, frames=1, seed=2, pab=never, **SMALL)
    assert np.array_equal(off.frames, same.frames)
    assert all(v["broadcast"] == 0 for v in off.pab_stats.values())


def test_pab_changes_output(tiny_opensora_engine):
    off = tiny_opensora_engine.generate("a cat", frames=1, seed=4, pab="none", **SMALL)
    on = tiny_opensora_engine.generate("a cat", frames=1, seed=4, pab="pab579", **SMALL)
    assert not np.array_equal(off.frames, on.frames)


def test_bfloat16_passes_size_conditioning_in_the_model_dtype(tiny_opensora_dir, monkeypatch):
    engine = VideoSysEngine("opensora", weights=tiny_opensora_dir, device="cpu", dtype="bfloat16", progress=False)
    recorder = CallRecorder(pipeline_of(engine).transformer, monkeypatch)
    result = engine.generate("a cat", steps=1, frames=1, resolution="480p", aspect="9:16")
    call = recorder.calls[0]
    assert call["fps"].dtype == torch.bfloat16
    # the sizes as host numbers, already rounded: 854 in bfloat16 is 856, the value the reference conditions on
    assert (call["height"], call["width"]) == (480.0, 856.0)
    assert all(type(call[k]) is float for k in ("height", "width"))
    assert result.frames.shape == (1, 480, 848, 3)


def test_the_denoise_loop_reads_nothing_back_from_the_device(tiny_opensora_engine, monkeypatch):
    """No ``item`` / ``tolist`` inside the transformer's calls: on a GPU each is a host sync that drains the
    queue the host had run ahead with (a size read back from a device tensor cost two per step)."""
    model = pipeline_of(tiny_opensora_engine).transformer
    inside = {"depth": 0, "reads": 0}
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            inside["reads"] += inside["depth"] > 0
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    forward = model.forward

    def watched(*args, **kwargs):
        inside["depth"] += 1
        try:
            return forward(*args, **kwargs)
        finally:
            inside["depth"] -= 1

    monkeypatch.setattr(model, "forward", watched)
    tiny_opensora_engine.generate("a cat", steps=2, frames=1, seed=0, pab="none", **SMALL)
    assert inside["reads"] == 0
    # the counter works: the model's own size reading, given a tensor, is one
    with torch.no_grad():
        model._pixel_size(torch.tensor([480.0]), 480, "height")
    inside["depth"] = 1
    model._pixel_size(torch.tensor([480.0]), 480, "height")
    assert inside["reads"] == 1


# --------------------------------------------------------------------------- CLI and the bundled model


def test_cli_generate_with_a_local_checkpoint(tiny_opensora_dir, tmp_path, capsys):
    out = tmp_path / "os.mp4"
    code = main(["generate", "a cat", "--model", "opensora", "--resolution", "480p", "--aspect", "9:16",
                 "--frames", "2s", "--steps", "2", "--weights", str(tiny_opensora_dir), "--pab", "pab246",
                 "--no-progress", "-o", str(out)])
    assert code == 0 and out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "(51 frames, 848x480, 24 fps)" in text
    assert "pab        pab246" in text


def test_cli_bad_size_is_one_line(tiny_opensora_dir, capsys):
    code = main(["generate", "a cat", "--model", "opensora", "--resolution", "1080p", "--weights",
                 str(tiny_opensora_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "resolution: '1080p' not allowed" in err and err.count("\n") == 1


def test_bundled_smoke_checkpoint():
    assert (SMOKE_DIR / "transformer" / "config.json").is_file(), "run: python scripts/make_smoke_checkpoint.py"
    total = sum(p.stat().st_size for p in SMOKE_DIR.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"models/opensora-smoke is {total} bytes"
    assert (SMOKE_DIR / "videosys.yaml").read_text() == SMOKE_OVERLAY


def test_bundled_smoke_is_the_opensora_default(tmp_path, capsys):
    out = tmp_path / "smoke.mp4"
    assert main(["generate", "a cat", "--model", "opensora", "--steps", "2", "--no-progress", "-o", str(out)]) == 0
    assert "(51 frames, 256x144, 24 fps)" in capsys.readouterr().out
    # 480p 9:16 2s through the CLI: test_cli_generate_with_a_local_checkpoint


def test_models_lists_opensora(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"opensora:", out) and "pab246, pab357, pab579 (default pab246)" in out
