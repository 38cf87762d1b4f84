"""The demo model's groundwork: synthetic clips, the held-out split, the adherence scorer, the training
script (a CPU smoke run writing a loadable checkpoint) and the ``eval`` entry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from videosys.demo import clips
from videosys.demo.scorer import detect, score


def test_clips_are_deterministic() -> None:
    a = clips.make_clip(np.random.default_rng([3, 7]))
    b = clips.make_clip(np.random.default_rng([3, 7]))
    c = clips.make_clip(np.random.default_rng([3, 8]))
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption and a.attributes == b.attributes
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (16, 64, 64, 3) and a.frames.dtype == np.uint8


def test_clips_cover_every_attribute() -> None:
    rng = np.random.default_rng(0)
    seen: dict[str, set[str]] = {"colour": set(), "shape": set(), "motion": set(), "background": set()}
    for _ in range(400):
        clip = clips.make_clip(rng, split="all")
        a = clip.attributes
        for key, values in seen.items():
            values.add(getattr(a, key))
        assert a.colour in clip.caption and a.shape in clip.caption
    assert seen == {"colour": set(clips.COLOURS), "shape": set(clips.SHAPES), "motion": set(clips.MOTIONS),
                    "background": set(clips.BACKGROUNDS)}
    assert len(clips.COLOURS) >= 5 and {"circle", "square", "triangle"} <= set(clips.SHAPES)
    assert {"left", "right", "up", "down"} < set(clips.MOTIONS)
    assert clips.canonical_caption("red", "circle", "left") == "a red circle moving left"


def test_held_out_split_is_disjoint_and_compositional() -> None:
    train, held = set(clips.train_combinations()), set(clips.held_out_combinations())
    assert held and not train & held and train | held == set(clips.all_combinations())
    assert ("red", "circle", "left") in train  # the README's example is a training combination
    # every pair of attributes of a held-out combination is seen in training
    for c, s, m in held:
        assert any(t[:2] == (c, s) for t in train)
        assert any((t[0], t[2]) == (c, m) for t in train)
        assert any(t[1:] == (s, m) for t in train)
    rng = np.random.default_rng(1)
    for _ in range(300):
        assert clips.sample_attributes(rng, "train").combination in train
        assert clips.sample_attributes(rng, "held_out").combination in held


@pytest.mark.parametrize("size", [64, 128])
def test_scorer_is_exact_on_clean_clips(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(60):
        clip = clips.make_clip(rng, split="all", size=size)
        assert score(detect(clip.frames), clip.attributes)["all"], clip.attributes


def test_scorer_gets_each_attribute_value() -> None:
    rng = np.random.default_rng(5)
    cases = ([clips.ClipAttributes(c, "circle", "right", "gray") for c in clips.COLOURS]
             + [clips.ClipAttributes("blue", s, "still", "white") for s in clips.SHAPES]
             + [clips.ClipAttributes("red", "square", m, bg) for m in clips.MOTIONS for bg in clips.BACKGROUNDS])
    for attrs in cases:
        found = detect(clips.make_clip(rng, attributes=attrs).frames)
        assert (found.colour, found.shape, found.motion) == attrs.combination


def test_scorer_degrades_gracefully_on_noise() -> None:
    rng = np.random.default_rng(9)
    right = 0
    for _ in range(40):
        clip = clips.make_clip(rng, split="all")
        noisy = np.clip(clip.frames + rng.normal(0, 15, clip.frames.shape), 0, 255).astype(np.uint8)
        right += score(detect(noisy), clip.attributes)["all"]
    assert right >= 38
    found = detect(rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))  # no object at all: no error
    assert not score(found, ("red", "circle", "left"))["all"]
    empty = detect(np.zeros((16, 64, 64, 3), np.uint8))
    assert not empty.found and empty.colour is None


def test_held_out_prompts_and_psnr() -> None:
    from videosys.demo.eval import held_out_prompts, psnr

    prompts = held_out_prompts(20, seed=4)
    assert len(prompts) == 20 and [p.seed for p in prompts] == list(range(4, 24))
    assert all(clips.is_held_out(*p.expected) for p in prompts)
    assert prompts[0].prompt == clips.canonical_caption(*prompts[0].expected)
    video = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert psnr(video, video) == float("inf") and 0 < psnr(video, 255 - video) < 10


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CPU smoke run of scripts/train_demo.py (tiny preset)."""
    from videosys.demo.train import main

    out = tmp_path_factory.mktemp("demo") / "latte-demo"
    assert main(["--out", str(out), "--minutes", "0.25", "--device", "cpu", "--clips", "16", "-q"]) == 0
    return out


def test_train_demo_writes_a_loadable_checkpoint(demo_checkpoint: Path) -> None:
    from videosys import VideoSysEngine
    from videosys.demo.tokenizer import split_words

    for part in ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                 "tokenizer/spiece.model", "transformer/config.json", "vae/config.json", "videosys.yaml",
                 "train_demo.json"):
        assert (demo_checkpoint / part).is_file(), part
    record = json.loads((demo_checkpoint / "train_demo.json").read_text())
    assert record["transformer"]["steps"] >= 2 and record["vae"]["steps"] >= 2
    assert record["checkpoint_bytes"] < 30 * 2**20
    assert set(record["vae"]["round_trip_adherence"]) == {"colour", "shape", "motion", "all"}
    from transformers import AutoTokenizer

    assert split_words(AutoTokenizer.from_pretrained(demo_checkpoint / "tokenizer")) == {}  # one token per word
    engine = VideoSysEngine(model="latte", weights=demo_checkpoint, device="cpu", progress=False)
    result = engine.generate("a red circle moving left", steps=2)
    assert result.frames.shape == (16, 64, 64, 3)


def test_eval_entry_scores_held_out_prompts(demo_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from videosys.cli import COMMAND_MODULES
    from videosys.commands import demo_eval

    assert "demo_eval" in COMMAND_MODULES
    parser = argparse.ArgumentParser()
    demo_eval.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--weights", str(demo_checkpoint), "--n", "2", "--device", "cpu",
                              "--pab", "pab236", "--json"])
    assert args.handler(args) == 0
    report = json.loads(capsys.readouterr().out)
    for branch in ("off", "pab"):
        assert report[branch]["count"] == 2
        assert all(0.0 <= v <= 1.0 for v in report[branch]["accuracy"].values())
    assert "mean" in report["psnr"]


def test_vae_round_trip_adherence_of_a_perfect_autoencoder_is_one() -> None:
    """The trainer's VAE check scores decoded held-out clips: a lossless 'VAE' must score 100%."""
    from types import SimpleNamespace

    import torch

    from videosys.demo.train import vae_round_trip_adherence

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def encode(self, x: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

        def decode(self, z: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(sample=z)

    result = vae_round_trip_adherence(Identity(), seed=0, size=64, device=torch.device("cpu"), n=8)
    assert result == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}


def test_vae_only_then_vae_from(tmp_path: Path) -> None:
    """The two-job schedule: --vae-only writes the VAE and its round-trip check; --vae-from trains the
    transformer on exactly that VAE (saved in float16); a folder without a VAE is refused by name."""
    import torch
    from safetensors.torch import load_file

    from videosys.demo.train import main

    vae_run, full = tmp_path / "vae", tmp_path / "full"
    assert main(["--out", str(vae_run), "--minutes", "0.1", "--device", "cpu", "--clips", "8", "--vae-only", "-q"]) == 0
    assert not (vae_run / "transformer").exists()
    record = json.loads((vae_run / "train_demo.json").read_text())
    assert record["vae"]["steps"] >= 2 and "round_trip_adherence" in record["vae"]
    assert main(["--out", str(full), "--minutes", "0.1", "--device", "cpu", "--clips", "8",
                 "--vae-from", str(vae_run), "-q"]) == 0
    trained = load_file(vae_run / "vae" / "diffusion_pytorch_model.safetensors")
    shipped = load_file(full / "vae" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == shipped.keys()
    assert all(torch.equal(trained[k].half(), shipped[k]) for k in trained)
    assert json.loads((full / "train_demo.json").read_text())["vae"]["from"] == str(vae_run)
    with pytest.raises(FileNotFoundError, match="no VAE there"):
        main(["--out", str(tmp_path / "x"), "--minutes", "0.1", "--device", "cpu", "--clips", "8",
              "--vae-from", str(tmp_path), "-q"])


def test_transformer_from_continues_an_earlier_checkpoint(tmp_path: Path) -> None:
    """--transformer-from starts from the earlier checkpoint's transformer (the model, not a fresh init),
    keeps its tokenizer and text encoder as they are, records the earlier job, and refuses a run without the
    checkpoint's VAE or a folder without a transformer."""
    import torch
    from safetensors.torch import load_file

    from videosys.demo.train import main

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--minutes", "1", "--vae-steps", "2", "--steps", "2", "--device", "cpu", "--clips", "8", "-q"]
    assert main(["--out", str(first), *common]) == 0
    # zero steps of continuation would be a copy; two steps at a zero learning rate keep every weight
    assert main(["--out", str(second), *common, "--vae-from", str(first), "--transformer-from", str(first),
                 "--steps", "2", "--lr", "0", "--clips", "16"]) == 0  # other clips: the VAE factor must not move
    before = load_file(first / "transformer" / "diffusion_pytorch_model.safetensors")
    after = load_file(second / "transformer" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    record = json.loads((second / "train_demo.json").read_text())
    assert record["transformer_from"]["from"] == str(first) and record["transformer_from"]["steps"] >= 2
    for part in ("text_encoder/model.safetensors", "tokenizer/spiece.model"):
        assert (first / part).read_bytes() == (second / part).read_bytes(), part
    def factor(folder: Path) -> float:
        return json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]

    assert factor(second) == factor(first)  # the factor the transformer was trained with
    with pytest.raises(FileNotFoundError, match="--transformer-from"):
        main(["--out", str(tmp_path / "x"), *common, "--vae-from", str(first), "--transformer-from", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --vae-from"):
        main(["--out", str(tmp_path / "y"), *common, "--transformer-from", str(first)])


def test_vae_loss_weights_the_object() -> None:
    """An error on the object's pixels costs more than the same error on the background."""
    import torch

    from videosys.demo.train import _weighted_reconstruction

    x = torch.full((1, 3, 8, 8), -0.5)
    x[..., 3:5, 3:5] = 0.8  # the object
    on_object, on_background = x.clone(), x.clone()
    on_object[..., 3, 3] += 0.2
    on_background[..., 0, 7] += 0.2
    assert _weighted_reconstruction(on_object, x, 4.0) > 2 * _weighted_reconstruction(on_background, x, 4.0)
    assert _weighted_reconstruction(x, x, 4.0) == 0


# -- the bundled demo model (models/latte-demo): issue 10's adherence and PAB-quality targets on CPU --------
@pytest.fixture(scope="module")
def bundled_demo_report() -> dict:
    """Each held-out combination once (16 prompts) with PAB off; the first 8 also with the demo's default
    preset (pab236), to keep the CPU time of the suite down (about 100 s + 50 s)."""
    from videosys import VideoSysEngine
    from videosys.demo.eval import compare_pab, evaluate, held_out_prompts

    engine = VideoSysEngine("latte", device="cpu", progress=False)  # no weights: the registry's default
    assert engine.checkpoint.name == "latte-demo"
    prompts = held_out_prompts()
    report = compare_pab(engine, prompts[:8], "pab236")
    report["off_rest"] = evaluate(engine, prompts[8:])
    return report


def test_bundled_demo_model_follows_held_out_prompts(bundled_demo_report: dict) -> None:
    items = bundled_demo_report["off"].items + bundled_demo_report["off_rest"].items
    assert len(items) == 16 and len({tuple(i["expected"]) for i in items}) == 16
    right = sum(i["all"] for i in items)
    assert right / 16 >= 0.9, [(i["prompt"], i["detected"]) for i in items if not i["all"]]


def test_bundled_demo_model_keeps_quality_under_pab(bundled_demo_report: dict) -> None:
    """PSNR against PAB off: the issue's >= 25 dB. Adherence: at most one of the 8 prompts may change its
    verdict (the issue's "within 2 points" is for the larger benchmark, where one prompt is 1.6 points of 64;
    docs/demo.md has those measurements: +3.1 points on the H200's 64, -1.8 over 112 other prompts on the
    CPU). Measured on this machine: 8/8 -> 8/8, and on all 16: 15/16 -> 15/16 ("a green square standing
    still", seed 9, is a circle either way), PSNR 41.0 dB mean over the 16."""
    off, pab = bundled_demo_report["off"], bundled_demo_report["pab"]
    assert bundled_demo_report["psnr"]["mean"] >= 25.0, bundled_demo_report["psnr"]
    flips = sum(a["all"] != b["all"] for a, b in zip(off.items, pab.items))
    assert flips <= 1, (off.summary(), pab.summary())
