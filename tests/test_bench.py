"""The benchmark harness on CPU (the GPU numbers are in docs/benchmarks.md): it runs every setting, counts
the denoiser calls and the FLOPs of one call, and reports per-stage medians."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videosys.bench.harness import _FirstCallFlops, run_bench


def test_first_call_flops_counts_one_forward_only() -> None:
    layer = torch.nn.Linear(16, 32, bias=False)
    counter = _FirstCallFlops(layer)
    x = torch.randn(4, 16)
    layer(x)
    layer(x)
    assert counter.flops == 2 * 4 * 16 * 32


def test_first_call_flops_counts_the_model_as_written_and_the_folded_call() -> None:
    """The floor counts the cross-attention unfolded (q_linear, attention, proj); the call that runs folded
    a short caption (two thin GEMMs) does fewer FLOPs; the fold is switched back on after the count."""
    from videosys.models.opensora.stdit3 import CrossAttention

    module = CrossAttention(64, 4)
    x, y = torch.randn(1, 50, 64), torch.randn(1, 3, 64)
    nominal = _FirstCallFlops(module, unfolded=True)
    executed = _FirstCallFlops(module, skip_calls=1)
    with torch.no_grad():
        module(x, y)
        assert module.fold_short_context
        module(x, y)
    q_and_proj = 2 * (2 * 50 * 64 * 64)
    assert nominal.flops > q_and_proj > executed.flops > 0
    assert executed.flops >= 2 * (2 * 50 * 64 * 4 * 3)  # the two thin GEMMs over the 4 heads x 3 keys


def test_first_call_flops_counts_the_gelu_epilogue_gemm() -> None:
    """The MLP's GEMM with a GELU epilogue (eager CUDA) counts as the GEMM it is, like the plain form."""
    from videosys.models.layers.activations import linear_gelu_tanh

    layer = torch.nn.Linear(16, 32)
    x = torch.randn(2, 4, 16)
    counts = []
    for epilogue in (False, True):
        module = torch.nn.Module()
        module.forward = lambda x, epilogue=epilogue: linear_gelu_tanh(x, layer, epilogue=epilogue)
        counter = _FirstCallFlops(module)
        module(x)
        counts.append(counter.flops)
    assert counts == [2 * 8 * 16 * 32] * 2


def test_first_call_flops_leaves_compiled_pieces_compiled() -> None:
    """The FLOP-counted first call must not make torch.compile give up on the block pieces: the timed calls
    after it run the compiled graphs (they once ran eagerly, and ``bench --compile`` measured eager mode)."""
    from torch._dynamo.utils import counters

    from videosys.models.compile import compile_pieces
    from videosys.testing.tiny_stdit3 import make_stdit3

    model = make_stdit3(seed=0).eval()
    assert compile_pieces(model, backend="eager") > 0
    x = {"x": torch.randn(2, 4, 3, 4, 4), "timestep": torch.tensor([500.0, 400.0]), "y": torch.randn(2, 5, 32)}
    torch._dynamo.reset()
    counters.clear()
    counter = _FirstCallFlops(model)
    with torch.no_grad():
        model(**x)
        assert counter.flops > 0 and counters["stats"]["unique_graphs"] == 0  # counted eagerly
        model(**x)
    assert counters["stats"]["unique_graphs"] > 0


def test_first_call_flops_removed_after_a_failed_forward() -> None:
    layer = torch.nn.Linear(16, 32)
    counter = _FirstCallFlops(layer)
    with pytest.raises(RuntimeError):
        layer(torch.randn(4, 15))
    counter.remove()
    compiled = torch.compile(lambda t: t * 2, backend="eager")
    counters_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled(torch.randn(3))  # compiles again: no eager stance left behind
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == counters_before + 1


def test_run_bench_on_cpu_reports_every_setting(tiny_latte_dir) -> None:
    report = run_bench("latte", weights=str(tiny_latte_dir), device="cpu", pab=["pab236"], repeats=2, warmup=0,
                       overrides={"steps": 4})
    assert [s.pab for s in report.settings] == ["none", "pab236"]
    assert report.denoiser_calls == 4
    assert report.call_tflop > 0
    assert report.first_request_s > 0 and "first request" in report.markdown().splitlines()[0]
    for s in report.settings:
        assert s.runs == 2 and set(s.stages_s) >= {"text_encoder", "denoise", "vae_decode", "total"}
        assert s.per_call_ms == pytest.approx(s.stages_s["denoise"] / 4 * 1e3)
    assert "| pab236 |" in report.markdown()


def test_run_bench_with_a_pab_cache_format_reports_the_kept_outputs(tiny_latte_dir) -> None:
    report = run_bench("latte", weights=str(tiny_latte_dir), device="cpu", pab=["pab236"], pab_cache="int8",
                       repeats=1, warmup=0, overrides={"steps": 20})
    none, int8 = report.settings
    assert (none.pab, int8.pab) == ("none", "pab236+int8")
    assert sum(v["broadcast"] for v in int8.pab_stats.values()) > 0
    assert none.pab_kept_gib == 0 and int8.pab_kept_gib > 0
    assert "| pab236+int8 |" in report.markdown()


def test_bench_refuses_cuda_without_a_gpu(tiny_latte_dir) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="'cuda' not available"):
        run_bench("latte", weights=str(tiny_latte_dir))


def test_run_bench_through_a_pool_reports_comm_per_setting(tiny_latte_dir) -> None:
    """The same harness through the Ray pool (2 CPU ranks, SP 2): stage medians and the communication of each
    setting; broadcast steps skip all-to-alls, so PAB moves fewer bytes."""
    report = run_bench("latte", weights=str(tiny_latte_dir), device="cpu", pab=["pab236"], repeats=1, warmup=0,
                       overrides={"steps": 20}, engine_kwargs={"world_size": 2, "sp": 2})
    off, on = report.settings
    assert "2 ranks" in report.layout
    assert off.comm_stats["all_to_all"]["calls"] > on.comm_stats["all_to_all"]["calls"] > 0
    assert on.pab_stats["temporal"]["broadcast"] > 0
    assert set(off.stages_s) >= {"denoise", "total"}
    assert "| pab236 |" in report.markdown()


# -- host syncs (videosys/bench/syncs.py; scripts/check_syncs.py runs it on a GPU) ---------------------------


def _sync_warning() -> None:
    import warnings

    from videosys.bench.syncs import SYNC_WARNING

    warnings.warn(f"{SYNC_WARNING} (as torch's debug mode words it)", UserWarning, stacklevel=1)


def _loop_step() -> None:
    _sync_warning()


def test_sync_recorder_counts_by_site_and_passes_other_warnings_on() -> None:
    import warnings
    from pathlib import Path

    from videosys.bench.syncs import recording_syncs

    passed_on = []
    saved = warnings.showwarning
    warnings.showwarning = lambda message, *args, **kwargs: passed_on.append(str(message))
    try:
        with recording_syncs(root=Path(__file__).resolve().parent, depth=2) as sites:
            for _ in range(3):
                _loop_step()
            _sync_warning()
            warnings.warn("something else", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = saved
    assert passed_on == ["something else"]
    assert sum(sites.values()) == 4 and len(sites) == 2
    (site, n), (other, m) = sites.most_common()
    # innermost first, as "file:line <- caller:line"
    assert n == 3 and site.startswith("test_bench.py:") and " <- test_bench.py:" in site
    assert m == 1 and other != site


def test_per_step_keeps_the_sites_that_grow_with_the_steps() -> None:
    from collections import Counter

    from videosys.bench.syncs import per_step

    short = Counter({"encode": 2, "loop": 4, "decode": 1})
    long = Counter({"encode": 2, "loop": 8, "decode": 1, "late": 2})
    assert per_step(short, long, 2, 4) == {"late": 1.0, "loop": 2.0}
    assert per_step(short, short, 2, 4) == {}
    with pytest.raises(ValueError, match="more steps"):
        per_step(short, long, 4, 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_counting_syncs_without_a_gpu_says_so() -> None:
    from videosys.bench.syncs import count_syncs

    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        count_syncs(lambda: None)


def test_bench_command_takes_other_sizes_and_names_a_bad_one(tiny_opensora_dir, tmp_path, capsys) -> None:
    import json

    from videosys.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "opensora", "--weights", str(tiny_opensora_dir), "--device", "cpu", "--steps", "2",
            "--repeats", "1", "--warmup", "0", "--pab", "none", "--resolution", "144p", "--aspect", "1:1",
            "--frames", "16", "--json", str(out)]
    assert main(argv) == 0
    request = json.loads(out.read_text())["opensora"]["request"]
    assert (request["frames"], request["height"], request["width"]) == (16, 192, 192)
    assert "16 x 192 x 192" in capsys.readouterr().out
    assert main([*argv[:-2], "--resolution", "999p"]) != 0
    assert "resolution: '999p' not allowed" in capsys.readouterr().err


# -- scripts/bench_sp_rank.py: an SP rank timed on one device ------------------------------------------------
def test_sp_rank_script_runs_a_rank_on_one_device_and_restores_the_collectives(capsys, monkeypatch) -> None:
    """A dry run on the bundled Open-Sora model: the rank's all-to-alls are counted (two per spatial block:
    both directions), the projection is made per bandwidth, and torch.distributed is itself again after."""
    import runpy

    import torch.distributed as dist

    before = dist.all_to_all, dist.all_gather
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "bench_sp_rank.py")
    monkeypatch.setattr("sys.argv", [script, "--device", "cpu", "--weights", "", "--frames", "51",
                                     "--resolution", "144p", "--calls", "1", "--bandwidths", "100,10"])
    runpy.run_path(script, run_name="__main__")
    report = json.loads(capsys.readouterr().out)
    assert (dist.all_to_all, dist.all_gather) == before
    assert report["sp"] == 2 and report["device"] == "cpu"
    assert report["rank sends per call"]["all_to_all"]["calls"] == 2 * 2  # the bundled model: 2 spatial blocks
    assert report["rank sends per call"]["all_to_all"]["bytes"] > 0
    projected = report["projected SP 2 speedup (transfer not overlapped)"]
    assert set(projected) == {"100 GB/s", "10 GB/s"} and projected["10 GB/s"] <= projected["100 GB/s"]
