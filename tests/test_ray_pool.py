"""The Ray worker pool on CPU (local Ray, gloo): the same video as in-process, data-parallel groups that keep
request order, a killed rank that becomes a WorkerError naming it and a pool that is rebuilt, no processes
left after shutdown, and bad pool requests refused before anything starts."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from support import interruptible_python

from videosys import VideoSysEngine
from videosys.errors import WorkerError
from videosys.parallel import ParallelConfigError

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(600)

SMALL = {"steps": 3, "seed": 5}


def _pool(weights, **kw) -> VideoSysEngine:
    return VideoSysEngine("latte", weights=weights, device="cpu", progress=False, timeout_s=120, **kw)


@pytest.fixture(scope="module")
def in_process(tiny_latte_dir) -> VideoSysEngine:
    return VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", progress=False)


def _assert_same_video(got: np.ndarray, want: np.ndarray) -> None:
    """fp32 over gloo sums in another order than one process: uint8 frames may differ by one level."""
    assert got.shape == want.shape and got.dtype == np.uint8
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1


def _descendants() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def _wait_gone(pids: list[int], seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_bad_pool_requests_fail_before_anything_starts(tiny_latte_dir) -> None:
    with pytest.raises(ParallelConfigError, match=r"sp 3 = 3 ranks per request does not divide world_size 2"):
        _pool(tiny_latte_dir, world_size=2, sp=3)
    with pytest.raises(ParallelConfigError, match=r"CFG parallel.*does not divide world_size 3"):
        _pool(tiny_latte_dir, world_size=3, cfg_parallel=True)
    cpus = os.cpu_count() or 1
    with pytest.raises(ParallelConfigError, match=rf"{cpus + 1} ranks need {cpus + 1} CPUs but this machine has {cpus}"):
        _pool(tiny_latte_dir, world_size=cpus + 1)
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            VideoSysEngine("latte", weights=tiny_latte_dir, device="cuda", world_size=2)
    with pytest.raises(ParallelConfigError, match="placement: 'diagonal' not allowed"):
        _pool(tiny_latte_dir, world_size=2, placement="diagonal")
    assert not ray.is_initialized(), "a refused pool must not start Ray"


def test_pool_of_two_ranks_gives_the_in_process_video(tiny_latte_dir, in_process) -> None:
    want = in_process.generate("a red panda eating bamboo", **SMALL)
    with _pool(tiny_latte_dir, world_size=2, sp=2) as engine:
        assert engine.concurrency == 1
        got = engine.generate("a red panda eating bamboo", **SMALL)
        pids = engine._executor.worker_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        # the sequence-parallel all-to-alls ran between the two ranks
        assert got.comm_stats["all_to_all"]["calls"] > 0
    _assert_same_video(got.frames, want.frames)
    assert got.request == want.request
    assert _wait_gone(pids) == []
    assert not ray.is_initialized()


def test_two_data_parallel_groups_serve_a_list_in_order(tiny_latte_dir, in_process) -> None:
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    seeds = [11, 12, 13, 14]
    want = [in_process.generate(p, steps=2, seed=s) for p, s in zip(prompts, seeds)]
    # "spread" placement (soft: one node holds both bundles here) takes the same path a cluster would
    with _pool(tiny_latte_dir, world_size=2, sp=1, placement="spread") as engine:
        assert engine.concurrency == 2
        requests = [engine.make_request(p, steps=2, seed=s) for p, s in zip(prompts, seeds)]
        got = engine.generate_requests(requests)
    assert [r.request.prompt for r in got] == prompts
    for g, w in zip(got, want):
        _assert_same_video(g.frames, w.frames)


def test_killed_rank_is_a_worker_error_and_the_next_request_succeeds(tiny_latte_dir) -> None:
    with _pool(tiny_latte_dir, world_size=2, sp=2) as engine:
        engine.load()
        victim = engine._executor.worker_pids()[1]
        timer = threading.Timer(3.0, os.kill, (victim, signal.SIGKILL))
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(WorkerError) as info:
                engine.generate("a slow request", steps=1000, seed=1)  # longer than the 3 s before the kill
        finally:
            timer.cancel()
        assert time.monotonic() - start < 120, "the failure must surface within the pool's timeout"
        assert info.value.rank == 1
        assert "rank 1" in str(info.value)
        assert _wait_gone([victim], 5) == []
        # the pool was torn down; the next request builds a fresh one and succeeds
        result = engine.generate("a red panda eating bamboo", steps=2, seed=2)
        assert result.frames.shape[0] == result.request.frames
        assert victim not in engine._executor.worker_pids()


def test_shutdown_leaves_no_processes(tiny_latte_dir) -> None:
    before = {p.pid for p in _descendants()}
    engine = _pool(tiny_latte_dir, world_size=2, sp=2).load()
    pids = engine._executor.worker_pids()
    assert all(psutil.pid_exists(p) for p in pids)
    engine.shutdown()
    engine.shutdown()  # twice is fine
    assert _wait_gone(pids) == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and {p.pid for p in _descendants()} - before:
        time.sleep(0.5)
    left = [(p.pid, p.name()) for p in _descendants() if p.pid not in before]
    assert left == [], f"processes left after shutdown: {left}"


def test_cli_generate_on_a_pool_of_two_cpu_ranks(tiny_latte_dir, tmp_path, capsys) -> None:
    import json

    from videosys.cli import main

    out = tmp_path / "pool.mp4"
    code = main(["generate", "a red panda", "--weights", str(tiny_latte_dir), "--device", "cpu", "--gpus", "2",
                 "--sp", "2", "--steps", "2", "--seed", "3", "--no-progress", "--json", "-o", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.is_file() and summary["output"] == str(out)
    assert summary["comm_stats"]["all_to_all"]["calls"] > 0
    assert not ray.is_initialized(), "the CLI shuts its pool down"
    code = main(["generate", "a red panda", "--weights", str(tiny_latte_dir), "--device", "cpu", "--gpus", "2",
                 "--sp", "3", "-o", str(tmp_path / "bad.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not divide world_size 2" in err


def test_launch_runs_a_batch_config_on_the_pool_and_resumes(tiny_latte_dir, tmp_path, capsys) -> None:
    import json

    from videosys.cli import main

    config = tmp_path / "batch.yaml"
    config.write_text(
        f"model: {{name: latte, weights: {tiny_latte_dir}, device: cpu}}\n"
        "sampling: {steps: 2, seed: 10}\n"
        "prompts: [a red circle, a blue square, a green triangle]\n"
        f"output: {{dir: {tmp_path / 'out'}, format: gif}}\n")
    code = main(["launch", "--gpus", "2", str(config), "--no-progress", "--json"])
    assert code == 0, capsys.readouterr().err
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    done = [r for r in manifest if r.get("status") == "done"]
    assert sorted(r["prompt"] for r in done) == ["a blue square", "a green triangle", "a red circle"]
    assert not ray.is_initialized()
    capsys.readouterr()
    assert main(["launch", "--gpus", "2", str(config), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 3 and summary["done"] == 0
    code = main(["launch", "--gpus", "2", "--sp", "3", str(config)])
    assert code == 2 and "does not divide world_size 2" in capsys.readouterr().err


_INTERRUPTED_DRIVER = """
import sys
from videosys import VideoSysEngine
with VideoSysEngine("latte", weights=sys.argv[1], device="cpu", progress=False, world_size=2, sp=2,
                    timeout_s=120) as engine:
    engine.load()
    print("pids", *engine._executor.worker_pids(), flush=True)
    try:
        engine.generate("a long request", steps=1000, seed=1)  # longer than the 3 s before the interrupt
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
"""


def test_ctrl_c_mid_request_leaves_no_processes(tiny_latte_dir, tmp_path) -> None:
    import subprocess

    script = tmp_path / "driver.py"
    script.write_text(_INTERRUPTED_DRIVER)
    proc = subprocess.Popen(interruptible_python(str(script), str(tiny_latte_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pids"), line
        workers = [int(p) for p in line.split()[1:]]
        time.sleep(3)  # the request is running on both ranks
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert set(workers) <= set(family)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in rest and proc.returncode != 0
    assert _wait_gone(family, 30) == [], "Ray or worker processes outlived the interrupted driver"
