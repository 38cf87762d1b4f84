"""Random full-size checkpoints (``weights="random"``): the official layout and sizes without weight files,
loaded through the same loaders as real checkpoints, deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videosys import VideoSysEngine
from videosys.io.checkpoint import check_layout
from videosys.io.random_checkpoint import random_checkpoint, write_random_checkpoint
from videosys.models.random_init import (
    RANDOM_MARKER,
    build_random,
    fill_random_,
    is_random_component,
)
from videosys.registry import default_registry


def _params_on_meta(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("model", ["latte", "opensora", "opensora-plan"])
def test_random_checkpoint_has_the_official_layout_and_no_weights(tmp_path, model) -> None:
    folder = write_random_checkpoint(model, tmp_path / model, seed=3)
    spec = default_registry().get(model)
    check_layout(folder, spec.pipeline_class().components, model)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".safetensors", ".bin")]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    assert not (folder / "videosys.yaml").exists(), "the smoke overlay would restrict sizes to the smoke model's"
    t5 = _json(folder / "text_encoder" / "config.json")
    assert (t5["d_model"], t5["num_layers"], t5["num_heads"], t5["vocab_size"]) == (4096, 24, 64, 32128)
    markers = sorted(p.parent.name for p in folder.rglob(RANDOM_MARKER))
    assert "text_encoder" in markers and "vae" in markers


def test_full_size_configs_give_the_official_parameter_counts(tmp_path) -> None:
    """Parameter counts of the published models (meta device, no memory): the configs are the real ones."""
    from transformers import T5Config, T5EncoderModel

    from videosys.models.latte import LatteTransformer3D
    from videosys.models.opensora import STDiT3

    latte = write_random_checkpoint("latte", tmp_path / "latte")
    opensora = write_random_checkpoint("opensora", tmp_path / "opensora")
    n_latte = _params_on_meta(lambda: LatteTransformer3D.from_config_dict(_json(latte / "transformer/config.json")))
    n_stdit = _params_on_meta(lambda: STDiT3.from_config_dict(_json(opensora / "transformer/config.json")))
    n_t5 = _params_on_meta(lambda: T5EncoderModel(T5Config.from_pretrained(latte / "text_encoder")))
    assert 1.05e9 < n_latte < 1.06e9  # Latte-1: 28 spatial + 28 temporal blocks, 1.06B (4.2 GB in fp32)
    assert 1.15e9 < n_stdit < 1.25e9  # STDiT3-XL/2 with its caption projection: 1.21B
    assert 4.7e9 < n_t5 < 4.8e9  # T5 v1.1 XXL encoder: 4.76B


def test_fill_is_seeded_and_keeps_architecture_constants() -> None:
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))

    a, b, c = make(), make(), make()
    fill_random_(a, 1), fill_random_(b, 1), fill_random_(c, 2)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert abs(float(a[0].weight.detach().std()) - 0.02) < 0.01
    assert torch.all(a[0].bias == 0) and torch.all(a[1].weight == 1)


def test_marker_needs_an_integer_seed(tmp_path) -> None:
    (tmp_path / RANDOM_MARKER).write_text('{"seed": "x"}')
    assert is_random_component(tmp_path)
    with pytest.raises(ValueError, match="seed 'x' is not an integer"):
        build_random(lambda: torch.nn.Linear(2, 2), tmp_path, torch.float32, "cpu")


def _shrink(folder: Path) -> None:
    """Tiny sizes in the random checkpoint's configs (markers kept): the random loaders run in seconds."""
    def edit(path: Path, **values) -> None:
        path.write_text(json.dumps({**_json(path), **values}))

    edit(folder / "transformer/config.json", num_attention_heads=2, attention_head_dim=8, num_layers=2,
         cross_attention_dim=16, caption_channels=32, sample_size=16)
    edit(folder / "vae/config.json", block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4)
    edit(folder / "text_encoder/config.json", d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
         vocab_size=1000)


def test_random_components_load_through_the_pipeline(tmp_path, monkeypatch) -> None:
    folder = write_random_checkpoint("latte", tmp_path / "latte", seed=0)
    _shrink(folder)
    (folder / "videosys.yaml").write_text("allowed:\n  sizes: [[128, 128]]\n  frames: [16]\n"
                                          "sampling:\n  height: 128\n  width: 128\n")

    def run(seed_folder: Path) -> np.ndarray:
        engine = VideoSysEngine("latte", weights=seed_folder, device="cpu", progress=False)
        return engine.generate("a cat", steps=2, seed=1).frames

    first, again = run(folder), run(folder)
    assert np.array_equal(first, again)
    (folder / "transformer" / RANDOM_MARKER).write_text('{"seed": 99}')
    assert not np.array_equal(first, run(folder))


def test_engine_weights_random_uses_the_cached_checkpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VIDEOSYS_CACHE", str(tmp_path))
    engine = VideoSysEngine("opensora", weights="random", device="cpu", progress=False)
    assert engine.checkpoint == tmp_path / "random" / "opensora-seed0"
    assert engine.pipeline_spec().random_of == "opensora"
    # the official sizes are allowed (no smoke overlay), and the cache is reused, not rewritten
    engine.make_request("a cat", resolution="480p", aspect="9:16", frames="4s")
    stamp = (engine.checkpoint / RANDOM_MARKER).stat().st_mtime_ns
    assert random_checkpoint("opensora") == engine.checkpoint
    assert (engine.checkpoint / RANDOM_MARKER).stat().st_mtime_ns == stamp
