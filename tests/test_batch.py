"""Batch generation from a YAML config on the tiny Latte checkpoint: manifest contents, skips on rerun,
regeneration of damaged outputs, resume after SIGKILL / SIGINT, failures, and config errors listed at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from support import interruptible_python, sigint_raises

from videosys.batch import (
    BatchConfigError,
    BatchInterrupted,
    Manifest,
    ManifestBusyError,
    execute_batch,
    prepare_batch,
    run_batch,
)
from videosys.batch.loading import parse_override
from videosys.batch.outputs import incomplete_reason, mp4_frame_count
from videosys.cli import main

REPO = Path(__file__).resolve().parent.parent


def make_config(ckpt: Path, out: Path, prompt_list: list, **extra) -> dict:
    config = {
        "model": {"name": "latte", "weights": str(ckpt), "device": "cpu"},
        "sampling": {"steps": 2, "frames": 4, "height": 32, "width": 32, "seed": 100},
        "prompts": prompt_list,
        "output": {"dir": str(out), "name": "{index:02d}-{name}", "format": "mp4"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def items(manifest: Path) -> list[dict]:
    return [r for r in map(json.loads, manifest.read_text().splitlines()) if r["type"] == "item"]


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}


PROMPTS = [
    "a cat",
    {"prompt": "a dog", "seed": 7, "videos": 2, "frames": 1},
    {"prompt": "a cow", "name": "cow", "negative_prompt": "blurry", "width": 48},
]
NAMES = ["00-a-cat.mp4", "01-a-dog.mp4", "02-a-dog.mp4", "03-cow.mp4"]


@pytest.fixture
def batch_yaml(tiny_latte_dir: Path, tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "batch.yaml", make_config(tiny_latte_dir, tmp_path / "out", PROMPTS))


def test_batch_writes_every_item_and_records_it(batch_yaml, tmp_path):
    summary = run_batch(batch_yaml, progress=False)
    out = tmp_path / "out"
    assert (summary.total, summary.done, summary.skipped, summary.failed, summary.not_run) == (4, 4, 0, 0, 0)
    assert summary.exit_code == 0 and summary.mean_seconds > 0
    assert sorted(p.name for p in out.glob("*.mp4")) == NAMES
    records = items(out / "manifest.jsonl")
    assert [r["key"] for r in records] == NAMES
    assert all(r["status"] == "done" and r["error"] is None for r in records)
    # seeds: the entry's seed + variant, else sampling.seed + item index
    assert [r["seed"] for r in records] == [100, 7, 8, 103]
    assert [r["request"]["frames"] for r in records] == [4, 1, 1, 4]
    assert records[3]["request"]["negative_prompt"] == "blurry" and records[3]["request"]["width"] == 48
    assert [r["origin"] for r in records] == ["prompts[0]", "prompts[1]", "prompts[1]", "prompts[2]"]
    assert [r["output"] for r in records] == NAMES  # relative to the manifest's folder
    for r in records:
        path = out / r["output"]
        assert r["bytes"] == path.stat().st_size
        assert r["frames"] == mp4_frame_count(path) == r["request"]["frames"]
        assert {"text_encoder", "denoise", "vae_decode", "total", "save"} <= set(r["timings"])
        assert set(r["pab_stats"]) >= {"spatial", "temporal", "cross"}
        assert r["pab_peak_kept_bytes"] == 0  # PAB off
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_rerun_skips_everything(batch_yaml, tmp_path):
    out = tmp_path / "out"
    run_batch(batch_yaml, progress=False)
    before = mtimes(out)
    lines = len((out / "manifest.jsonl").read_text().splitlines())
    summary = run_batch(batch_yaml, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (0, 4, 0)
    assert mtimes(out) == before
    after = (out / "manifest.jsonl").read_text().splitlines()
    assert len(after) == lines + 1 and json.loads(after[-1])["type"] == "run"  # only the run record


def test_deleted_or_truncated_output_is_the_only_one_regenerated(batch_yaml, tmp_path):
    out = tmp_path / "out"
    run_batch(batch_yaml, progress=False)
    before = mtimes(out)
    (out / NAMES[1]).unlink()
    data = (out / NAMES[3]).read_bytes()
    (out / NAMES[3]).write_bytes(data[: len(data) // 2])
    time.sleep(0.01)
    summary = run_batch(batch_yaml, progress=False)
    assert (summary.done, summary.skipped) == (2, 2)
    after = mtimes(out)
    assert after[NAMES[0]] == before[NAMES[0]] and after[NAMES[2]] == before[NAMES[2]]
    assert after[NAMES[1]] != before[NAMES[1]] and after[NAMES[3]] != before[NAMES[3]]
    assert (out / NAMES[3]).read_bytes() == data  # same request and seed: the same video again
    assert [r["key"] for r in items(out / "manifest.jsonl")][4:] == [NAMES[1], NAMES[3]]


def test_changed_request_is_regenerated_and_same_size_damage_is_caught(batch_yaml, tmp_path):
    out = tmp_path / "out"
    run_batch(batch_yaml, progress=False)
    before = mtimes(out)
    summary = run_batch(batch_yaml, ["prompts[0].steps=3"], progress=False)
    assert (summary.done, summary.skipped) == (1, 3)
    assert mtimes(out)[NAMES[0]] != before[NAMES[0]]
    record = items(out / "manifest.jsonl")[-1]
    assert record["key"] == NAMES[0] and record["request"]["steps"] == 3
    # a file of the right size that is not a finished MP4 does not count as done
    path = out / NAMES[2]
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)
    assert incomplete_reason(path, "mp4", size, 1) is not None


def test_failed_item_is_recorded_the_batch_goes_on_and_a_rerun_retries_it(batch_yaml, tmp_path):
    out = tmp_path / "out"
    batch = prepare_batch(batch_yaml)
    real = batch.engine.generate_requests

    def flaky(requests, return_exceptions=False):
        results = real(requests, return_exceptions=return_exceptions)
        return [RuntimeError("out of memory") if r.prompt == "a dog" else res for r, res in zip(requests, results)]

    batch.engine.generate_requests = flaky
    summary = execute_batch(batch, progress=False)
    assert (summary.done, summary.failed, summary.not_run, summary.exit_code) == (2, 2, 0, 1)
    assert summary.failures == [(NAMES[1], "RuntimeError: out of memory"), (NAMES[2], "RuntimeError: out of memory")]
    failed = [r for r in items(out / "manifest.jsonl") if r["status"] == "failed"]
    assert [r["key"] for r in failed] == NAMES[1:3] and failed[0]["error"] == "RuntimeError: out of memory"
    assert not (out / NAMES[1]).exists()
    summary = run_batch(batch_yaml, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (2, 2, 0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped KeyboardInterrupt
def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_batch(batch_yaml, tmp_path):
    """Python raises a signal's KeyboardInterrupt in whatever runs next, which can be a ``__del__`` that drops
    it ("Exception ignored"): the batch still stops after the item in flight, recorded, as interrupted."""
    batch = prepare_batch(batch_yaml)
    real = batch.engine.generate_requests

    class Finaliser:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # the KeyboardInterrupt is raised in here, and dropped

    def generate(requests, return_exceptions=False):
        results = real(requests, return_exceptions=return_exceptions)
        Finaliser()  # collected at once
        return results

    batch.engine.generate_requests = generate
    with sigint_raises():
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(BatchInterrupted) as info:
            execute_batch(batch, progress=False)
        assert signal.getsignal(signal.SIGINT) is handler  # the batch's handler is gone with it
    summary = info.value.summary
    assert (summary.done, summary.not_run, summary.interrupted) == (1, 3, True)
    assert [r["status"] for r in items(tmp_path / "out" / "manifest.jsonl")] == ["done"]


def test_fail_fast_stops_at_the_first_failure(batch_yaml, tmp_path):
    batch = prepare_batch(batch_yaml)
    batch.engine.generate_requests = lambda requests, return_exceptions=False: [ValueError("bad")] * len(requests)
    summary = execute_batch(batch, fail_fast=True, progress=False)
    assert (summary.done, summary.failed, summary.not_run, summary.exit_code) == (0, 1, 3, 1)
    assert len(items(tmp_path / "out" / "manifest.jsonl")) == 1


def test_cli_runs_prints_the_summary_and_sets_the_exit_code(batch_yaml, tmp_path, capsys):
    out2 = tmp_path / "out2"
    assert main(["batch", str(batch_yaml), f"output.dir={out2}", "output.name={variant}-{seed}", "output.format=gif",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "items  done  skipped  failed  not run  s/video" in text
    assert sorted(p.name for p in out2.glob("*.gif")) == ["0-100.gif", "0-103.gif", "0-7.gif", "1-8.gif"]
    assert main(["batch", str(batch_yaml), f"output.dir={out2}", "output.name={variant}-{seed}", "output.format=gif",
                 "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"]) == (0, 4)


def test_png_folders_inline_pab_and_dry_run(tiny_latte_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = make_config(tiny_latte_dir, out, ["a cat", "a dog"], output={"format": "png"},
                         pab={"window": [100, 800], "spatial_range": 2})
    path = write_yaml(tmp_path / "batch.yaml", config)
    assert run_batch(path, progress=False).done == 2
    records = items(out / "manifest.jsonl")
    assert [r["frames"] for r in records] == [4, 4]
    assert records[0]["request"]["pab"]["spatial"] == {"window": [100.0, 800.0], "range": 2}
    (out / "01-a-dog" / "frame_0003.png").unlink()
    assert main(["batch", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"done  {out / '00-a-cat'}  seed 100  4x32x32  2 steps  pab custom")
    assert lines[1].startswith(f"todo  {out / '01-a-dog'}  seed 101")
    assert lines[2] == f"2 items: 1 to generate, 1 already done (manifest {out / 'manifest.jsonl'})"
    summary = run_batch(path, progress=False)
    assert (summary.done, summary.skipped) == (1, 1)
    assert len(list((out / "01-a-dog").glob("frame_*.png"))) == 4


def test_pab_preset_with_a_cache_format_in_config_and_entries(tiny_latte_dir, tmp_path):
    (tmp_path / "mine.yaml").write_text("window: [100, 800]\nspatial_range: 2\n")
    prompts = ["a cat", {"prompt": "a dog", "pab": {"preset": "pab236", "cache": "int8"}}]
    config = make_config(tiny_latte_dir, tmp_path / "out", prompts, pab={"preset": "mine.yaml", "cache": "int8"},
                         sampling={"steps": 8})
    batch = prepare_batch(write_yaml(tmp_path / "batch.yaml", config))  # mine.yaml: relative to the config
    try:
        assert [i.request.pab.label for i in batch.items] == ["mine+int8", "pab236+int8"]
        assert batch.items[0].request.pab.spatial.range == 2
        assert execute_batch(batch, progress=False).done == 2
    finally:
        batch.engine.shutdown()
    for r in items(tmp_path / "out" / "manifest.jsonl"):
        assert r["request"]["pab"]["cache"] == "int8"
        assert r["pab_stats"]["spatial"]["broadcast"] > 0 and r["pab_peak_kept_bytes"] > 0
    bad = make_config(tiny_latte_dir, tmp_path / "out", ["a cat"], pab={"preset": "pab236", "cache": "fp8"})
    with pytest.raises(BatchConfigError, match=r"pab.cache: 'fp8' not allowed \(allowed: native, int8\)"):
        prepare_batch(write_yaml(tmp_path / "bad.yaml", bad))


def test_one_batch_per_manifest_at_a_time(batch_yaml, tmp_path):
    lock = Manifest(tmp_path / "out" / "manifest.jsonl")
    with lock, pytest.raises(ManifestBusyError, match="in use by another batch run"):
        run_batch(batch_yaml, progress=False)


def test_a_cut_short_manifest_line_is_ignored(batch_yaml, tmp_path):
    out = tmp_path / "out"
    run_batch(batch_yaml, progress=False)
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + '{"type": "item", "key": "00-a-ca')  # a crash mid-write
    summary = run_batch(batch_yaml, progress=False)
    assert (summary.done, summary.skipped) == (0, 4)
    assert json.loads(manifest.read_text().splitlines()[-1])["type"] == "run"


def test_prompt_files_with_overrides(tiny_latte_dir, tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat\n\na dog\n")
    (tmp_path / "p.jsonl").write_text('"a cat"\n\n{"prompt": "a dog", "seed": 5, "frames": 1, "steps": 3}\n')
    (tmp_path / "p.csv").write_text("prompt,seed,frames,negative_prompt,guidance\na cat,,,,\n\"a dog, running\",5,1,ugly,2.5\n")
    config = make_config(tiny_latte_dir, tmp_path / "out", [], videos_per_prompt=2)
    del config["prompts"]
    seen = {}
    for name in ("p.txt", "p.jsonl", "p.csv"):
        batch = prepare_batch(write_yaml(tmp_path / f"{name}.yaml", {**config, "prompts_file": name}))
        seen[name] = [(i.origin, i.request.prompt, i.request.seed, i.request.frames) for i in batch.items]
        batch.engine.shutdown()
    assert seen["p.txt"] == [("p.txt:2", "a cat", 100, 4), ("p.txt:2", "a cat", 101, 4),
                             ("p.txt:4", "a dog", 102, 4), ("p.txt:4", "a dog", 103, 4)]
    assert seen["p.jsonl"] == [("p.jsonl:1", "a cat", 100, 4), ("p.jsonl:1", "a cat", 101, 4),
                               ("p.jsonl:3", "a dog", 5, 1), ("p.jsonl:3", "a dog", 6, 1)]
    assert seen["p.csv"] == [("p.csv:2", "a cat", 100, 4), ("p.csv:2", "a cat", 101, 4),
                             ("p.csv:3", "a dog, running", 5, 1), ("p.csv:3", "a dog, running", 6, 1)]
    assert not (tmp_path / "out").exists()


def test_engine_options_reach_the_engine(tiny_latte_dir, tmp_path):
    config = make_config(tiny_latte_dir, tmp_path / "out", ["a cat"],
                         model={"weights": str(tiny_latte_dir), "device": "cpu", "compile": True,
                                "offload_text_encoder": True, "fused_kernels": False, "float8": True})
    spec = prepare_batch(write_yaml(tmp_path / "opts.yaml", config)).engine.pipeline_spec()
    assert spec.compile and spec.offload_text_encoder and not spec.fused_kernels and spec.float8


def test_dotted_overrides_parse():
    assert parse_override("sampling.steps=2") == (["sampling", "steps"], 2)
    assert parse_override("prompts[1].seed=5") == (["prompts", 1, "seed"], 5)
    assert parse_override("prompts.1.negative_prompt=a b") == (["prompts", 1, "negative_prompt"], "a b")
    assert parse_override("output.name={index}-{slug}") == (["output", "name"], "{index}-{slug}")
    assert parse_override("model.weights=null") == (["model", "weights"], None)
    with pytest.raises(ValueError, match="expected key=value"):
        parse_override("sampling.steps")


BAD_CASES = {
    "unknown key": ({"sampling": {"stpes": 2}}, [
        ("sampling.stpes: unknown key (allowed: steps, guidance, frames, height, width, resolution, aspect, fps, "
         "negative_prompt, seed)")]),
    "wrong type": ({"sampling": {"steps": "two"}, "videos_per_prompt": 1.5}, [
        "sampling.steps: 'two' not allowed (allowed: an integer or null)",
        "videos_per_prompt: 1.5 not allowed (allowed: an integer)"]),
    "missing prompts file": ({"prompts_file": "nope.jsonl"}, [
        "prompts_file: file 'nope.jsonl' does not exist (looked for '{tmp}/nope.jsonl')"]),
    "bad per-prompt override": ({"prompts": ["a cat", {"prompt": "a dog", "frames": 17}, {"prompt": "a cow", "steps": 0, "pab": "pab999"}]}, [
        "prompts[1].frames: 17 not allowed (allowed: 1, 4 for latte)",
        "prompts[2].pab: 'pab999' is not a preset of this model (allowed: none, pab236, pab347, pab469, or a YAML file)",
        "prompts[2].steps: 0 not allowed (allowed: an integer from 1 to 1000 for latte)"]),
    "bad defaults reported once": ({"sampling": {"frames": 17}}, [
        "sampling.frames: 17 not allowed (allowed: 1, 4 for latte)"]),
    "bad model": ({"model": {"name": "sora"}}, [
        "model.name: 'sora' is not registered (allowed: latte, opensora, opensora-plan)"]),
    "bad engine option": ({"model": {"compile": "yes"}}, [
        "model.compile: 'yes' not allowed (allowed: true or false)"]),
    "clashing output names": ({"output": {"name": "{slug}"}, "prompts": ["a cat", "a cat"]}, [
        "output.name: '{slug}' gives 'a-cat.mp4' for both prompts[0] and prompts[1]; add {index} or {variant}"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_config_lists_every_error_and_writes_nothing(case, tiny_latte_dir, tmp_path):
    change, expected = BAD_CASES[case]
    config = make_config(tiny_latte_dir, tmp_path / "out", ["a cat"], **change)
    path = write_yaml(tmp_path / "bad.yaml", config)
    with pytest.raises(BatchConfigError) as info:
        run_batch(path, progress=False)
    assert info.value.errors == [e.replace("{tmp}", str(tmp_path)) for e in expected]
    assert not (tmp_path / "out").exists()


def test_cli_lists_all_errors_with_exit_code_2(tiny_latte_dir, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("prompt,seed,colour\na cat,abc,red\na dog,,\n")
    config = make_config(tiny_latte_dir, tmp_path / "out", [{"prompt": "a cow", "frames": 17}, 42],
                         model={"colour": "blue"}, prompts_file="p.csv")
    code = main(["batch", str(write_yaml(tmp_path / "bad.yaml", config)), "sampling.fps=0", "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [
        f"videosys: error: batch config in {tmp_path / 'bad.yaml'}: 6 errors",
        ("  model.colour: unknown key (allowed: name, weights, device, dtype, compile, offload_text_encoder, "
         "fused_kernels, float8, cuda_graphs)"),
        "  prompts[1]: 42 not allowed (allowed: a prompt string, or a mapping with a prompt and overrides)",
        ("  p.csv:1: unknown column(s) 'colour' (allowed: prompt, name, seed, frames, height, width, resolution, "
         "aspect, negative_prompt, steps, guidance, fps, pab, videos)"),
        "  p.csv:2: seed: 'abc' not allowed (allowed: an integer or null)",
        "  sampling.fps: 0 not allowed (allowed: an integer from 1 to 120)",
        "  prompts[0].frames: 17 not allowed (allowed: 1, 4 for latte)",
    ]
    assert not (tmp_path / "out").exists()


# -- interrupted runs ------------------------------------------------------------------------------------------
def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(interruptible_python("videosys.cli", "batch", str(config), "--no-progress", module=True),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_done(manifest: Path, proc: subprocess.Popen, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manifest.is_file() and sum('"status": "done"' in line for line in manifest.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, f"the batch ended early: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no item finished in time")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_batch_resumes_without_redoing_finished_items(sig, tiny_latte_dir, tmp_path):
    out = tmp_path / "out"
    # the second item takes many steps, so the signal sent when the first is recorded lands in the middle of it
    prompts = ["a cat", {"prompt": "a dog", "steps": 30}, "a cow", "a bird"]
    config = write_yaml(tmp_path / "batch.yaml", make_config(tiny_latte_dir, out, prompts))
    proc = _start(config)
    try:
        _wait_for_done(out / "manifest.jsonl", proc, 1)
        t0 = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        print(f"exited {time.monotonic() - t0:.1f}s after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted: rerun the same command to resume" in stdout, stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    finished = {r["key"] for r in items(out / "manifest.jsonl") if r["status"] == "done"}
    assert 1 <= len(finished) < len(prompts), "the signal should land mid-batch"
    before = mtimes(out)
    assert set(before) == finished  # no half-written video under a final name
    t0 = time.monotonic()
    summary = run_batch(config, progress=False)
    print(f"resumed in {time.monotonic() - t0:.1f}s")
    assert (summary.skipped, summary.done, summary.failed) == (len(finished), len(prompts) - len(finished), 0)
    after = mtimes(out)
    assert {k: after[k] for k in finished} == before
    assert len(after) == len(prompts)
    assert not [p for p in out.iterdir() if ".part" in p.name]
