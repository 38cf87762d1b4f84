"""The command line: a run writes the video and prints the summary; errors are one line and exit code 2."""

from __future__ import annotations

import json
import re

import pytest

from videosys.cli import main


def test_generate_writes_output_and_prints_pab_stats(tiny_latte_dir, tmp_path, capsys):
    out = tmp_path / "cat.gif"
    code = main(["generate", "a cat", "--weights", str(tiny_latte_dir), "--pab", "pab236", "--device", "cpu",
                 "--no-progress", "-o", str(out)])
    assert code == 0
    assert out.is_file()
    text = capsys.readouterr().out
    assert "pab        pab236" in text
    assert re.search(r"spatial\s+34 broadcast /\s+100 calls", text)  # 17 calls x 2 layers, of 50 x 2
    assert f"output     {out}" in text
    assert "graphs " not in text  # no call replayed from CUDA graphs on the CPU


def test_generate_json_summary(tiny_latte_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    code = main(["generate", "a dog", "--weights", str(tiny_latte_dir), "--steps", "3", "--seed", "5",
                 "--frames", "1", "--no-progress", "--json", "-o", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 5 and summary["frames"] == [1, 32, 32, 3]
    assert summary["pab"] == "none"
    assert len(list(out.glob("frame_*.png"))) == 1


def test_bundled_demo_model_is_the_default(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "a cat", "--steps", "2", "--no-progress", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "(16 frames, 64x64, 8 fps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "a cat", "--model", "sora"], "model: 'sora' is not registered"),
        (["generate", "a cat", "--pab", "pab999"], "'pab999' is not a preset"),
        (["generate", "a cat", "--frames", "17"], "frames: 17 not allowed (allowed: 16 for latte)"),
        (["generate", "a cat", "--steps", "0"], "steps: 0 not allowed"),
        (["generate", "a cat", "--guidance", "-2"], "guidance: -2.0 not allowed"),
        (["generate", "   "], "prompt: '   ' not allowed"),
        (["generate", "a cat", "--weights", "/no/such/folder"], "folder '/no/such/folder' does not exist"),
        (["generate", "a cat", "-o", "out.avi"], "output: suffix '.avi' not allowed"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_models_lists_presets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "latte:" in out and "pab236, pab347, pab469 (default pab236)" in out


def test_a_failed_save_keeps_the_frames(tiny_latte_dir, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ffmpeg(name, *args, **kwargs):
        if name == "imageio_ffmpeg":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ffmpeg)
    out = tmp_path / "cat.mp4"
    code = main(["generate", "a cat", "--weights", str(tiny_latte_dir), "--steps", "2", "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "writing .mp4 needs imageio-ffmpeg" in err and "cat_frames" in err
    assert len(list((tmp_path / "cat_frames").glob("frame_*.png"))) == 4
    assert not out.exists()
