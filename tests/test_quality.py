"""PSNR / SSIM and ``videosys compare`` (videosys.quality) against values computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from videosys.cli import main
from videosys.io.video import save_video
from videosys.quality import compare, psnr, read_video, ssim, ssim_frames

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _video(seed: int = 0, t: int = 3, h: int = 20, w: int = 24, lo: int = 10, hi: int = 240) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, size=(t, h, w, 3), dtype=np.uint8)


def _ssim_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM of one [H, W] channel, window by window (no convolution), in float64."""
    k = np.arange(11) - 5
    g = np.exp(-(k**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    x, y = x.astype(np.float64), y.astype(np.float64)
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx, vy = (win * (px - mx) ** 2).sum(), (win * (py - my) ** 2).sum()
            cxy = (win * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


def test_identical_videos_have_infinite_psnr_and_ssim_one():
    v = _video()
    assert psnr(v, v.copy()) == math.inf
    assert ssim(v, v.copy()) == 1.0


def test_known_constant_shift():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))  # 28.1308 dB
    # flat frames: variances and covariance are 0, so SSIM is the luminance term alone
    expected = (2 * 100 * 110 + C1) / (100**2 + 110**2 + C1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.995476, abs=1e-6)


def test_known_perturbation_of_a_textured_video():
    a = _video(seed=1)
    b = a + np.uint8(3)  # a in [10, 240): no overflow; every pixel off by 3 -> MSE 9
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 9))  # 38.588 dB
    rng = np.random.default_rng(2)
    c = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - c.astype(float)) ** 2)
    assert psnr(a, c) == pytest.approx(10 * math.log10(255**2 / mse))
    per_frame = ssim_frames(a, c)
    by_hand = [np.mean([_ssim_brute_force(a[t, ..., ch], c[t, ..., ch]) for ch in range(3)]) for t in range(a.shape[0])]
    assert per_frame == pytest.approx(by_hand, rel=1e-9)
    assert ssim(a, c) == pytest.approx(np.mean(by_hand), rel=1e-9)
    assert 0.3 < ssim(a, c) < 0.99


def test_mismatched_videos_are_clear_errors():
    a = _video(t=3)
    with pytest.raises(ValueError, match="frame counts differ: A has 3 frames, B has 2"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match="frame sizes differ: A is 24x20, B is 23x20"):
        ssim(a, a[:, :, :23])
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        ssim(a[:, :10], a[:, :10])


def test_reads_png_folders_gif_and_mp4(tmp_path):
    v = _video(t=4, h=32, w=32)
    assert np.array_equal(read_video(save_video(v, tmp_path / "frames", fps=8)), v)
    flat = np.full((3, 16, 16, 3), 128, np.uint8)
    flat[1] = 64
    assert np.array_equal(read_video(save_video(flat, tmp_path / "clip.gif", fps=8)), flat)  # 2 colours: lossless
    back = read_video(save_video(v, tmp_path / "clip.mp4", fps=8))
    assert back.shape == v.shape and back.dtype == np.uint8  # lossy, but the same frames and size
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="suffix '.txt' not allowed"):
        read_video(tmp_path / "notes.txt")


def test_compare_two_videos_cli(tmp_path, capsys):
    a = _video(seed=4)
    save_video(a, tmp_path / "a", fps=8)
    save_video(a, tmp_path / "same", fps=8)
    save_video(a + np.uint8(3), tmp_path / "shifted", fps=8)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "same"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"][0]["psnr"] == "inf" and out["pairs"][0]["ssim"] == 1.0
    assert out["mean"] == {"psnr": "inf", "ssim": 1.0, "count": 1}
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "shifted")]) == 0
    text = capsys.readouterr().out
    assert "38.588" in text and "mean (1)" in text


def test_compare_folders_matches_by_name(tmp_path):
    ref, pab = tmp_path / "ref", tmp_path / "pab"
    videos = {name: _video(seed=i) for i, name in enumerate(["cat", "dog", "fox"])}
    for name, v in videos.items():
        if name != "fox":
            save_video(v, ref / name, fps=8)
        if name != "dog":
            save_video(v if name == "cat" else v + np.uint8(3), pab / name, fps=8)
    save_video(videos["fox"], ref / "fox", fps=8)
    report = compare(ref, pab, progress=False)
    assert [p.name for p in report.pairs] == ["cat", "fox"]
    assert report.pairs[0].psnr == math.inf
    assert report.pairs[1].psnr == pytest.approx(10 * math.log10(255**2 / 9))
    assert report.mean_psnr == math.inf and report.mean_ssim == pytest.approx((1 + report.pairs[1].ssim) / 2)
    assert report.only_a == ["dog"] and report.only_b == []


def _write_manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_manifests_matches_done_lines_by_prompt_seed_variant(tmp_path):
    base, pab = tmp_path / "base", tmp_path / "pab"
    v1, v2 = _video(seed=1), _video(seed=2)
    save_video(v1, base / "v1", fps=8)
    save_video(v2, base / "v2", fps=8)
    save_video(v1 + np.uint8(3), pab / "v1", fps=8)
    save_video(v2, pab / "v2", fps=8)
    _write_manifest(base / "manifest.jsonl", [
        {"prompt": "a cat", "seed": 1, "output": "v1", "status": "done"},
        {"prompt": "a cat", "seed": 2, "output": "v2", "status": "done"},
        {"prompt": "a dog", "seed": 1, "output": "gone", "status": "failed"},
    ])
    _write_manifest(pab / "manifest.jsonl", [
        {"prompt": "a cat", "seed": 2, "output": str(pab / "v2"), "status": "done"},  # absolute path, other order
        {"prompt": "a cat", "seed": 1, "output": "v1", "status": "done"},
        {"prompt": "a cat", "seed": 1, "output": "v1", "status": "done", "variant": 1},  # no partner
    ])
    report = compare(base / "manifest.jsonl", pab / "manifest.jsonl", progress=False)
    assert [p.name for p in report.pairs] == ["a cat (seed 1)", "a cat (seed 2)"]
    assert report.pairs[0].psnr == pytest.approx(10 * math.log10(255**2 / 9)) and report.pairs[1].psnr == math.inf
    assert report.only_b == ["a cat (seed 1, variant 1)"]


def test_compare_reads_the_batch_runner_manifest(tmp_path):
    """``videosys batch`` manifests: a run record, item records, the latest record of a key decides, and a
    line cut short by a crash is skipped."""
    v = _video(seed=5)
    save_video(v, tmp_path / "off" / "a-cat-0", fps=8)
    save_video(v, tmp_path / "off" / "a-dog-0", fps=8)
    save_video(v + np.uint8(3), tmp_path / "on" / "a-cat-0", fps=8)
    save_video(v, tmp_path / "on" / "a-dog-0", fps=8)

    def item(prompt, side, status="done"):
        return {"type": "item", "key": f"{prompt}-0", "index": 0, "prompt_index": 0, "variant": 0, "prompt": prompt,
                "seed": 7, "output": str(tmp_path / side / f"{prompt.replace(' ', '-')}-0"), "status": status}

    _write_manifest(tmp_path / "off.jsonl", [{"type": "run", "model": "latte"}, item("a cat", "off"), item("a dog", "off")])
    _write_manifest(tmp_path / "on.jsonl", [{"type": "run", "model": "latte"}, item("a cat", "on"), item("a dog", "on"),
                                            item("a dog", "on", status="failed")])
    with (tmp_path / "on.jsonl").open("a") as f:
        f.write('{"type": "item", "key": "a-b')  # an interrupted append
    report = compare(tmp_path / "off.jsonl", tmp_path / "on.jsonl", progress=False)
    assert [p.name for p in report.pairs] == ["a cat (seed 7, variant 0)"]
    assert report.pairs[0].psnr == pytest.approx(10 * math.log10(255**2 / 9))
    assert report.only_a == ["a dog (seed 7, variant 0)"]


def test_compare_bad_inputs_are_one_line_errors(tmp_path, capsys):
    save_video(_video(t=3), tmp_path / "three", fps=8)
    save_video(_video(t=2), tmp_path / "two", fps=8)
    save_video(_video(t=3, w=28), tmp_path / "wide", fps=8)
    (tmp_path / "set").mkdir()
    save_video(_video(), tmp_path / "set" / "x", fps=8)
    _write_manifest(tmp_path / "m.jsonl", [{"prompt": "a", "seed": 0, "output": "nothing-here"}])
    _write_manifest(tmp_path / "bad.jsonl", [{"prompt": "a", "seed": 0}])
    cases = [
        (["three", "two"], "frame counts differ"),
        (["three", "wide"], "frame sizes differ"),
        (["three", "missing.mp4"], "does not exist"),
        (["three", "set"], "A is a video and B is a folder"),
        (["m.jsonl", "m.jsonl"], "nothing-here' does not exist"),
        (["bad.jsonl", "m.jsonl"], "lacks output"),
    ]
    for args, message in cases:
        assert main(["compare", *(str(tmp_path / a) for a in args)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
