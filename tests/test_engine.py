"""End to end on a tiny Latte checkpoint written at test time: shapes, determinism, lists, PAB counts."""

from __future__ import annotations

import numpy as np
import pytest

from videosys import GenerationResult, PABConfig, VideoSysEngine
from videosys.pab import PABScheduler


def test_frames_shape_dtype_and_timings(tiny_engine):
    result = tiny_engine.generate("a red ball bouncing", steps=4)
    assert isinstance(result, GenerationResult)
    assert result.frames.shape == (4, 32, 32, 3)
    assert result.frames.dtype == np.uint8
    assert set(result.timings) == {"text_encoder", "denoise", "vae_decode", "total"}
    assert result.timings["total"] >= result.timings["denoise"] > 0
    assert result.request.steps == 4 and result.request.frames == 4


def test_same_seed_same_video_different_seed_different_video(tiny_engine):
    a = tiny_engine.generate("a cat", steps=3, seed=7)
    b = tiny_engine.generate("a cat", steps=3, seed=7)
    c = tiny_engine.generate("a cat", steps=3, seed=8)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_prompt_changes_the_video(tiny_engine):
    a = tiny_engine.generate("a cat", steps=3, seed=1)
    b = tiny_engine.generate("a dog running on the beach at sunset", steps=3, seed=1)
    assert not np.array_equal(a.frames, b.frames)


def test_list_in_list_out_in_order(tiny_engine):
    prompts = ["a cat", "a dog running", "a blue car"]
    results = tiny_engine.generate(prompts, steps=2, seed=3)
    assert [r.request.prompt for r in results] == prompts
    single = tiny_engine.generate("a dog running", steps=2, seed=3)
    assert np.array_equal(results[1].frames, single.frames)


def test_other_allowed_shapes(tiny_engine):
    assert tiny_engine.generate("a cat", steps=2, frames=1).frames.shape == (1, 32, 32, 3)
    assert tiny_engine.generate("a cat", steps=2, height=32, width=48).frames.shape == (4, 32, 48, 3)


def test_no_guidance_runs_without_negative_branch(tiny_engine):
    result = tiny_engine.generate("a cat", steps=2, guidance=1.0)
    assert result.frames.shape == (4, 32, 32, 3)


def test_pab_stats_follow_the_rule_for_50_ddim_steps(tiny_engine):
    result = tiny_engine.generate("a cat", pab="pab236")
    assert result.request.steps == 50
    config = tiny_engine.config.pab.get("pab236")
    plan = PABScheduler(config).plan([980 - 20 * i for i in range(50)])
    layers = 2  # the tiny checkpoint's num_layers
    expected = plan.expected_counts({"spatial": layers, "temporal": layers, "cross": layers, "mlp": layers}, mlp_sites=2)
    assert result.pab_stats == expected
    assert result.pab_stats["spatial"]["broadcast"] == 17 * layers
    assert result.pab_stats["temporal"]["broadcast"] == 23 * layers
    assert result.pab_stats["cross"]["broadcast"] == 28 * layers
    assert result.pab_stats["mlp"]["broadcast"] == 5 * 2 * layers * 2


def test_pab_off_is_bit_identical_to_a_plan_that_never_broadcasts(tiny_engine):
    off = tiny_engine.generate("a cat", steps=6, seed=2, pab="none")
    never = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 1, "temporal_range": 1, "cross_range": 1})
    same = tiny_engine.generate("a cat", steps=6, seed=2, pab=never)
    assert np.array_equal(off.frames, same.frames)
    assert all(v["broadcast"] == 0 for v in off.pab_stats.values())


def test_pab_changes_output_but_stays_close(tiny_engine):
    off = tiny_engine.generate("a cat", seed=4, pab="none")
    on = tiny_engine.generate("a cat", seed=4, pab="pab469")
    assert not np.array_equal(off.frames, on.frames)
    assert on.pab_stats["spatial"]["broadcast"] > 0


def test_engine_default_pab_and_per_request_override(tiny_latte_dir):
    engine = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", pab="pab236", progress=False)
    assert engine.make_request("a cat").pab.name == "pab236"
    assert engine.make_request("a cat", pab="none").pab.enabled is False
    assert engine.make_request("a cat", pab="pab347").pab.spatial.range == 3


def test_two_engines_in_one_process_do_not_interfere(tiny_latte_dir, tiny_engine):
    other = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", pab="pab469", progress=False)
    a = tiny_engine.generate("a cat", steps=8, seed=5)
    other.generate("a cat", steps=8, seed=5)
    again = tiny_engine.generate("a cat", steps=8, seed=5)
    assert np.array_equal(a.frames, again.frames)


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""])
def test_save_formats(tiny_engine, tmp_path, suffix):
    import imageio.v3 as iio

    result = tiny_engine.generate("a cat", steps=2)
    path = result.save(tmp_path / f"out{suffix}")
    assert path.exists()
    if suffix == "":
        frames = sorted(path.glob("frame_*.png"))
        assert len(frames) == 4
        assert np.array_equal(iio.imread(frames[0]), result.frames[0])
    elif suffix == ".gif":
        assert iio.imread(path, index=None).shape[0] == 4
    else:
        import imageio.v2 as imageio

        frames = imageio.mimread(path, format="FFMPEG")
        assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert not list(tmp_path.glob(".*part*"))


def test_no_pab_tensor_outlives_a_request(tiny_engine, monkeypatch):
    import gc
    import weakref

    from videosys.pab import run as pab_run

    runs, kept = [], []
    original = pab_run.PABRun.compute_or_broadcast

    def spy(self, kind, block, fn, site=""):
        out = original(self, kind, block, fn, site)
        if self.cached_entries:
            kept.extend(weakref.ref(v) for v in self._cache.values())
        if self not in runs:
            runs.append(self)
        return out

    monkeypatch.setattr(pab_run.PABRun, "compute_or_broadcast", spy)
    tiny_engine.generate("a cat", pab="pab236", steps=50)
    assert kept and runs and all(r.cached_entries == 0 for r in runs)
    runs.clear()
    gc.collect()
    assert all(ref() is None for ref in kept)


def test_saved_files_get_the_usual_permissions(tiny_engine, tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    path = tiny_engine.generate("a cat", steps=1).save(tmp_path / "v.gif")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
