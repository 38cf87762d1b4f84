"""Denoiser calls replayed from CUDA graphs (videosys.pipelines.cuda_graph): where they apply, when a request
turns them on, the wrapper's bookkeeping, PAB's fixed slots, and, with the capture emulated on the CPU,
whole requests (PAB on and off) that match the eager ones exactly. The emulated replay reruns the captured
call's Python with PAB's state as the capture saw it (its call index and the kept outputs it read, which a
real graph reads at the captured addresses), then restores the state, as a real replay runs no Python:
a replay that read a stale kept output would show here. The real capture runs on a GPU only
(docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videosys import VideoSysEngine
from videosys.cli import _format_summary
from videosys.pab import PABConfig, PABScheduler
from videosys.pipelines import cuda_graph
from videosys.pipelines.cuda_graph import GraphedDenoiser, graphs_apply

CUDA = torch.device("cuda")

#: every kind broadcast on a short request: several signatures, keeps, drops and MLP reuse
BUSY_PAB = {"name": "busy", "window": [0, 1000], "spatial_range": 2, "temporal_range": 2, "cross_range": 4,
            "mlp": {"timesteps": [700, 400], "blocks": [0, 1], "skip_count": 2, "match": "nearest"}}


def plain_run(steps: int = 6, pab: str = "none", observer=None):
    config = PABConfig.from_dict({"name": "none"}) if pab == "none" else PABConfig.from_dict(
        {"name": "every other", "window": [0, 1000], "spatial_range": 2})
    return PABScheduler(config).new_run([900.0 - 100 * i for i in range(steps)], observer=observer)


class FakeProbe:
    """A probe that says what the test wants (the real one times CUDA events)."""

    answer = True
    host_ms = 1.0

    def begin(self) -> None: ...

    def end(self) -> None: ...

    def host_bound(self) -> bool:
        return self.answer


def probe_says(monkeypatch: pytest.MonkeyPatch, host_bound: bool) -> None:
    monkeypatch.setattr(cuda_graph, "HostBoundProbe", type("Probe", (FakeProbe,), {"answer": host_bound}))


class EmulatedGraph:
    """What a replay does, on the CPU: the captured call on its input buffers, into its output buffer, with
    PAB's state as the capture saw it, which is restored afterwards (a real replay runs no Python)."""

    def __init__(self, fn, inputs, output, run) -> None:
        self.fn, self.inputs, self.output, self.run, self.replays = fn, inputs, output, run, 0
        self.call, self.kept = run._call, dict(run._cache)  # set before the capture's Python ran

    def replay(self) -> None:
        run = self.run
        state, call = run.snapshot(), run._call
        run._call, run._cache = self.call, dict(self.kept)
        try:
            self.output.copy_(self.fn(*self.inputs))
        finally:
            run.restore_snapshot(state)
            run._call = call
        self.replays += 1


def emulate_capture(monkeypatch: pytest.MonkeyPatch, runs: list) -> list[EmulatedGraph]:
    graphs: list[EmulatedGraph] = []

    def capture(fn, inputs, pool=None):
        graph = EmulatedGraph(fn, inputs, None, runs[-1])
        output = fn(*inputs)  # a capture runs the call's Python once (its kernels only on replay)
        graph.output = output.clone()
        graphs.append(graph)
        return graph, graph.output

    monkeypatch.setattr(cuda_graph, "capture_graph", capture)
    return graphs


def force_graphs(monkeypatch: pytest.MonkeyPatch) -> list:
    """Graphs apply to every run on the CPU, whose GPU waits on the host (emulated)."""
    from videosys.pipelines import base

    runs: list = []

    def forced(device, world_size, compiled, run) -> bool:
        runs.append(run)
        return graphs_apply(CUDA, world_size, compiled, run)

    monkeypatch.setattr(base, "graphs_apply", forced)
    probe_says(monkeypatch, True)
    return runs


def test_graphs_apply_on_one_cuda_rank_without_compile_or_observer() -> None:
    assert graphs_apply(CUDA, 1, False, plain_run())
    assert graphs_apply(CUDA, 1, False, plain_run(pab="every other"))  # one graph per PAB signature
    assert not graphs_apply(torch.device("cpu"), 1, False, plain_run())
    assert not graphs_apply(CUDA, 2, False, plain_run())  # collectives
    assert not graphs_apply(CUDA, 1, True, plain_run())  # torch.compile'd pieces
    assert not graphs_apply(CUDA, 1, False, plain_run(observer=lambda *args: None))


def test_a_gpu_that_sets_the_pace_keeps_every_call_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    run = plain_run()
    graphs = emulate_capture(monkeypatch, [run])
    probe_says(monkeypatch, False)
    denoiser = GraphedDenoiser(lambda x: x + 1, run)
    assert [denoiser(torch.tensor(float(i))).item() for i in range(6)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert denoiser.host_bound is False and not graphs and not run.fixed_slots


def test_the_wrapper_probes_then_captures_the_second_call_of_a_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    run = plain_run(steps=7)
    graphs = emulate_capture(monkeypatch, [run])
    probe_says(monkeypatch, True)

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        run.stats.computed["spatial"] += 2  # what a model's PAB bookkeeping counts per call
        return x * 2 + t

    denoiser = GraphedDenoiser(call, run)
    outs = []
    for i in range(7):
        run.begin_call()
        outs.append(denoiser(torch.full((3,), float(i)), torch.tensor(1.0)))
        assert denoiser.captured == (1 if i >= 3 else 0)  # calls 1-2 probe, 3 is the signature's first
    assert denoiser.host_bound and run.fixed_slots
    assert [o.tolist() for o in outs] == [[2 * i + 1.0] * 3 for i in range(7)]
    assert graphs[0].replays == 4 and denoiser.replays == 4  # the capture's replay and 3 more
    assert run.stats.computed["spatial"] == 7 * 2  # every call counted once
    assert outs[-1].data_ptr() != graphs[0].output.data_ptr()  # a copy: the next replay cannot change it
    run.begin_call() if run.call_index + 1 < run.plan.num_calls else None
    with pytest.raises(ValueError, match="keep their shapes and dtypes"):
        denoiser(torch.zeros(4), torch.tensor(1.0))


def test_a_failed_capture_goes_on_eagerly(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    run = plain_run()
    probe_says(monkeypatch, True)

    def no_capture(fn, inputs, pool=None):
        fn(*inputs)  # the Python ran, and counted, before the failure
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "capture_graph", no_capture)

    def call(x: torch.Tensor) -> torch.Tensor:
        run.stats.computed["cross"] += 1
        return x + 1

    denoiser = GraphedDenoiser(call, run)
    outs = []
    for i in range(6):
        run.begin_call()
        outs.append(denoiser(torch.tensor(float(i))))
    assert [o.item() for o in outs] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert denoiser.failed and denoiser.captured == 0
    assert run.stats.computed["cross"] == 6
    assert "CUDA graph capture of the denoiser call failed" in caplog.text


def test_fixed_slots_are_overwritten_in_place_and_counted_once() -> None:
    run = PABScheduler(PABConfig.from_dict({"name": "s", "window": [0, 1000], "spatial_range": 2})).new_run(
        [900.0 - 100 * i for i in range(6)])
    run.use_fixed_slots()
    seen = []
    for i in range(6):
        run.begin_call()
        out = run.compute_or_broadcast("spatial", 0, lambda i=i: torch.full((4,), float(i)))
        seen.append((out.clone(), out.data_ptr()))
    # calls 0, 2, 4 compute and keep; 1, 3, 5 broadcast the kept value, always from the same buffer
    assert [v[0].item() for v, _ in seen] == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]
    assert seen[1][1] == seen[3][1] == seen[5][1]
    assert run.kept_bytes == 16 and run.stats.peak_kept_bytes == 16
    assert run.close().broadcast["spatial"] == 3 and run.kept_bytes == 0


def test_effects_of_a_call_repeat_its_counts_and_kept_outputs() -> None:
    run = PABScheduler(PABConfig.from_dict({"name": "s", "window": [0, 1000], "spatial_range": 2})).new_run(
        [900.0 - 100 * i for i in range(4)])
    with pytest.raises(RuntimeError, match="fixed slots"):
        run.effects_since(run.snapshot())
    run.use_fixed_slots()
    run.begin_call()
    before = run.snapshot()
    run.compute_or_broadcast("spatial", 0, lambda: torch.ones(2))
    effects = run.effects_since(before)
    assert effects.computed["spatial"] == 1 and effects.kept == {("spatial", "", 0)}
    run.restore_snapshot(before)
    assert run.cached_entries == 0 and run.stats.computed["spatial"] == 0
    with pytest.raises(KeyError):  # a replay needs the slot its capture wrote
        run.apply_effects(effects)


@pytest.mark.parametrize("model", ["latte", "opensora"])
@pytest.mark.parametrize("pab", ["none", "busy", "busy+int8"])
def test_graphed_requests_match_eager_ones(model: str, pab: str, monkeypatch: pytest.MonkeyPatch,
                                           request: pytest.FixtureRequest) -> None:
    weights = request.getfixturevalue(f"tiny_{model}_dir")
    engine = VideoSysEngine(model, weights=weights, device="cpu", progress=False)
    size = {"frames": 17, "resolution": "144p", "aspect": "1:1"} if model == "opensora" else {}
    setting = "none" if pab == "none" else {**BUSY_PAB, "cache": "int8" if pab.endswith("int8") else "native"}
    eager = engine.generate("a cat", steps=20, seed=3, pab=setting, **size)
    runs = force_graphs(monkeypatch)
    graphs = emulate_capture(monkeypatch, runs)
    graphed = engine.generate("a cat", steps=20, seed=3, pab=setting, **size)
    replays = sum(g.replays for g in graphs)
    if pab == "none":  # one signature: call 3 eager, call 4 captured, 17 replays in all
        assert len(graphs) == 1 and replays == 17
    else:
        assert len(graphs) >= 3 and replays > len(graphs)
        assert sum(v["broadcast"] for v in eager.pab_stats.values()) > 0
    assert (graphed.frames == eager.frames).all()
    assert graphed.pab_stats == eager.pab_stats
    assert (graphed.replayed_calls, eager.replayed_calls) == (replays, 0)
    assert graphed.summary()["replayed_calls"] == replays
    assert f"graphs     {replays} denoiser calls replayed" in _format_summary(graphed, Path("cat.mp4"))
    assert graphed.pab_peak_kept_bytes >= eager.pab_peak_kept_bytes  # the fixed slots stay for the request
    # the option off: no graph
    count = len(graphs)
    VideoSysEngine(model, weights=weights, device="cpu", progress=False, cuda_graphs=False).generate(
        "a cat", steps=6, seed=3, **size)
    assert len(graphs) == count


def test_bench_counts_every_call_of_graphed_requests(monkeypatch: pytest.MonkeyPatch, tiny_latte_dir) -> None:
    """The harness counts a request's denoiser calls (and one call's FLOPs) on a request without replays:
    a replayed call never enters the model's forward."""
    from videosys.bench.harness import run_bench

    runs = force_graphs(monkeypatch)
    graphs = emulate_capture(monkeypatch, runs)
    report = run_bench("latte", weights=str(tiny_latte_dir), device="cpu", pab=[], repeats=1, warmup=0,
                       overrides={"steps": 5})
    assert len(graphs) == 1  # the timed request replayed; the counting one did not
    assert report.denoiser_calls == 5 and report.call_tflop > 0
    # calls 1-2 probe, 3 is the signature's first, 4 is captured (and replayed), 5 replays
    assert report.settings[0].replayed_calls == 2
    assert report.markdown().splitlines()[-1].endswith("| 2/5 |")


class FakeEvent:
    """A CUDA event whose completion and timing the test sets."""

    done = True
    elapsed_ms = 10.0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self) -> None: ...

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, other: FakeEvent) -> float:
        assert self.done, "elapsed_time on an unfinished event would wait"
        return self.elapsed_ms


@pytest.mark.parametrize(("done", "gpu_ms", "host_ms", "expected"), [
    (False, 10.0, 50.0, False),  # the GPU is still on the call: the host is ahead
    (True, 10.0, 9.0, True),  # the GPU finished and the host took most of its time: it waited on the host
    (True, 10.0, 5.0, False),  # the host took half the GPU's time: the GPU set the pace
])
def test_the_probe_calls_a_call_host_bound_only_where_the_gpu_waited(
        monkeypatch: pytest.MonkeyPatch, done: bool, gpu_ms: float, host_ms: float, expected: bool) -> None:
    monkeypatch.setattr(torch.cuda, "Event", type("Event", (FakeEvent,), {"done": done, "elapsed_ms": gpu_ms}))
    probe = cuda_graph.HostBoundProbe()
    probe.begin()
    probe.end()
    probe.host_ms = host_ms
    assert probe.host_bound() is expected
