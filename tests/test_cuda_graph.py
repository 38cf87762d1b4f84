"""Denoiser calls replayed from a CUDA graph (videosys.pipelines.cuda_graph): where they apply, the
wrapper's bookkeeping, and, with the capture emulated on the CPU (a "graph" whose replay reruns the call on
its input buffers without PAB's bookkeeping, as a real replay skips the Python), whole requests that match
the eager ones exactly. The real capture runs on a GPU only (docs/benchmarks.md, tenth session)."""

from __future__ import annotations

import pytest
import torch

from videosys import VideoSysEngine
from videosys.pab import PABConfig, PABScheduler
from videosys.pipelines import cuda_graph
from videosys.pipelines.cuda_graph import GraphedDenoiser, graphs_apply

CUDA = torch.device("cuda")


def plain_run(steps: int = 6, pab: str = "none", observer=None):
    config = PABConfig.from_dict({"name": "none"}) if pab == "none" else PABConfig.from_dict(
        {"name": "every other", "window": [0, 1000], "spatial_range": 2})
    return PABScheduler(config).new_run([900.0 - 100 * i for i in range(steps)], observer=observer)


def test_graphs_apply_only_where_every_call_does_the_same_work() -> None:
    assert graphs_apply(CUDA, 1, False, plain_run())
    assert not graphs_apply(torch.device("cpu"), 1, False, plain_run())
    assert not graphs_apply(CUDA, 2, False, plain_run())  # collectives
    assert not graphs_apply(CUDA, 1, True, plain_run())  # torch.compile'd pieces
    assert not graphs_apply(CUDA, 1, False, plain_run(pab="every other"))  # PAB decides per call
    assert not graphs_apply(CUDA, 1, False, plain_run(observer=lambda *args: None))
    with pytest.raises(RuntimeError, match="only a run whose calls all do the same work"):
        plain_run(pab="every other").count_call({"spatial": 1})


class EmulatedGraph:
    """What a replay does, on the CPU: the captured call on its input buffers, into its output buffer, with
    PAB's counters left as they were (a real replay runs no Python)."""

    def __init__(self, fn, inputs, output, run) -> None:
        self.fn, self.inputs, self.output, self.run, self.replays = fn, inputs, output, run, 0

    def replay(self) -> None:
        counters = dict(self.run.stats.computed)
        self.output.copy_(self.fn(*self.inputs))
        self.run.stats.computed.update(counters)
        self.replays += 1


def emulate_capture(monkeypatch: pytest.MonkeyPatch, runs: list) -> list[EmulatedGraph]:
    graphs: list[EmulatedGraph] = []

    def capture(fn, inputs):
        output = fn(*inputs)  # a capture runs the call's Python once (its kernels only on replay)
        graphs.append(EmulatedGraph(fn, inputs, output.clone(), runs[-1]))
        return graphs[-1], graphs[-1].output

    monkeypatch.setattr(cuda_graph, "capture_graph", capture)
    return graphs


def test_the_wrapper_runs_once_captures_once_then_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    run = plain_run()
    graphs = emulate_capture(monkeypatch, [run])
    seen: list[torch.Tensor] = []

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        run.stats.computed["spatial"] += 2  # what a model's PAB bookkeeping counts per call
        return x * 2 + t

    denoiser = GraphedDenoiser(call, run)
    outs = []
    for i in range(5):
        x = torch.full((3,), float(i))
        outs.append(denoiser(x, torch.tensor(1.0)))
        assert denoiser.replaying == (i >= 1)
    assert [o.tolist() for o in outs] == [[2 * i + 1.0] * 3 for i in range(5)]
    assert seen[0] is not None and graphs[0].replays == 4  # the capture's replay and 3 more
    assert run.stats.computed["spatial"] == 5 * 2  # every call counted once
    assert outs[-1].data_ptr() != graphs[0].output.data_ptr()  # a copy: the next replay cannot change it
    with pytest.raises(ValueError, match="keep their shapes and dtypes"):
        denoiser(torch.zeros(4), torch.tensor(1.0))


def test_a_failed_capture_goes_on_eagerly(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    run = plain_run()

    def no_capture(fn, inputs):
        fn(*inputs)  # the Python ran, and counted, before the failure
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "capture_graph", no_capture)

    def call(x: torch.Tensor) -> torch.Tensor:
        run.stats.computed["cross"] += 1
        return x + 1

    denoiser = GraphedDenoiser(call, run)
    outs = [denoiser(torch.tensor(float(i))) for i in range(4)]
    assert [o.item() for o in outs] == [1.0, 2.0, 3.0, 4.0]
    assert denoiser.failed and not denoiser.replaying
    assert run.stats.computed["cross"] == 4
    assert "CUDA graph capture of the denoiser call failed" in caplog.text


@pytest.mark.parametrize("model", ["latte", "opensora"])
def test_graphed_requests_match_eager_ones(model: str, monkeypatch: pytest.MonkeyPatch,
                                           request: pytest.FixtureRequest) -> None:
    weights = request.getfixturevalue(f"tiny_{model}_dir")
    engine = VideoSysEngine(model, weights=weights, device="cpu", progress=False)
    size = {"frames": 17, "resolution": "144p", "aspect": "1:1"} if model == "opensora" else {}
    eager = engine.generate("a cat", steps=4, seed=3, **size)
    runs: list = []
    real_apply = cuda_graph.graphs_apply

    def forced(device, world_size, compiled, run) -> bool:
        runs.append(run)
        return real_apply(CUDA, world_size, compiled, run)

    from videosys.pipelines import base

    monkeypatch.setattr(base, "graphs_apply", forced)
    graphs = emulate_capture(monkeypatch, runs)
    graphed = engine.generate("a cat", steps=4, seed=3, **size)
    assert len(graphs) == 1 and graphs[0].replays == 3  # call 1 eager, call 2 captured, 3 replays in all
    assert (graphed.frames == eager.frames).all()
    assert graphed.pab_stats == eager.pab_stats
    # PAB on, or the option off: no graph
    engine.generate("a cat", steps=4, seed=3, pab="pab246" if model == "opensora" else "pab236", **size)
    VideoSysEngine(model, weights=weights, device="cpu", progress=False, cuda_graphs=False).generate(
        "a cat", steps=4, seed=3, **size)
    assert len(graphs) == 1


def test_bench_counts_every_call_of_graphed_requests(monkeypatch: pytest.MonkeyPatch, tiny_latte_dir) -> None:
    """The harness counts a request's denoiser calls (and one call's FLOPs) on a request without replays:
    a replayed call never enters the model's forward."""
    from videosys.bench.harness import run_bench
    from videosys.pipelines import base

    runs: list = []

    def forced(device, world_size, compiled, run) -> bool:
        runs.append(run)
        return cuda_graph.graphs_apply(CUDA, world_size, compiled, run)

    monkeypatch.setattr(base, "graphs_apply", forced)
    graphs = emulate_capture(monkeypatch, runs)
    report = run_bench("latte", weights=str(tiny_latte_dir), device="cpu", pab=[], repeats=1, warmup=0,
                       overrides={"steps": 4})
    assert len(graphs) == 1  # the timed request replayed; the counting one did not
    assert report.denoiser_calls == 4 and report.call_tflop > 0
