"""Every model under sequence parallel (2 and 3 ranks: sizes that do not divide), CFG parallel and CFG x SP 2,
with PAB off and on: the same latents as one process within 1e-5 (fp32, gloo, processes started here), the
same video, and communication stats that show broadcast steps skipping their all-to-alls."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from videosys import PABConfig, RequestError, VideoSysEngine
from videosys.parallel import ParallelConfig, ParallelConfigError, ParallelState
from videosys.parallel.launch import RankError, run_local
from videosys.runtime import PipelineSpec

# PAB that broadcasts within a few steps: every kind on every other call, MLPs of block 0 around one key
EAGER_PAB = {"window": [0, 1000], "spatial_range": 2, "temporal_range": 2, "cross_range": 2}

# the attention kind whose compute function holds the all-to-alls
SP_KIND = {"latte": "temporal", "opensora-plan": "temporal", "opensora": "spatial"}

LAYOUTS = [
    pytest.param(ParallelConfig(sp=2), id="sp2"),
    pytest.param(ParallelConfig(sp=3), id="sp3"),
    pytest.param(ParallelConfig(cfg=True), id="cfg"),
    pytest.param(ParallelConfig(sp=2, cfg=True), id="cfg-sp2"),
]


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """Largest difference within ``tol`` of the tensor's scale (its largest magnitude). fp32 sums of a different
    batch or shard size round differently (about 1e-7 of the scale per operation), and guidance scales those
    differences up, so a per-element tolerance would fail on elements near zero for no fault of the algorithm."""
    assert got.shape == want.shape, what
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    assert err <= tol, f"{what}: largest difference {err:.2e} of the scale (allowed {tol:.0e})"


def _capturing_run(pipeline: Any, requests: list) -> tuple[list, list[torch.Tensor]]:
    """Generate the requests and keep the final latents each one handed to the VAE."""
    captured: list[torch.Tensor] = []
    decode = pipeline.decode

    def keep(latents, *args):
        captured.append(latents.detach().float().cpu().clone())
        return decode(latents, *args)

    pipeline.decode = keep
    return [pipeline.generate(r, progress=False) for r in requests], captured


def _rank(rank: int, world_size: int, spec: PipelineSpec, layout: ParallelConfig, requests: list):
    state = ParallelState.create(layout)
    pipeline = spec.build(state, local_rank=rank)
    for request in requests:
        pipeline.check(request)
    return _capturing_run(pipeline, requests)


def _rank_of_every_model(rank: int, world_size: int, jobs: list[tuple[PipelineSpec, list]],
                         layout: ParallelConfig) -> list:
    """:func:`_rank` for each ``(spec, requests)`` in turn, in one process group (one start per layout)."""
    return [_rank(rank, world_size, spec, layout, requests) for spec, requests in jobs]


def _requests(engine: VideoSysEngine, model: str) -> list:
    small = {"latte": {"steps": 4}, "opensora": {"steps": 4, "frames": 17, "resolution": "144p", "aspect": "9:16"},
             "opensora-plan": {"steps": 4}}[model]
    eager = PABConfig.from_dict(EAGER_PAB)
    return [engine.make_request("a red panda eating bamboo", seed=3, pab="none", **small),
            engine.make_request("a red panda eating bamboo", seed=3, pab=eager, **small)]


@pytest.fixture(scope="module")
def engines(tiny_latte_dir, tiny_opensora_dir, tiny_opensora_plan_dir) -> dict[str, VideoSysEngine]:
    dirs = {"latte": tiny_latte_dir, "opensora": tiny_opensora_dir, "opensora-plan": tiny_opensora_plan_dir}
    return {m: VideoSysEngine(m, weights=d, device="cpu", progress=False) for m, d in dirs.items()}


@pytest.fixture(scope="module")
def single(engines) -> dict[str, tuple[list, list[torch.Tensor]]]:
    """The one-process results and latents of every model's requests."""
    return {m: _capturing_run(e.load()._executor.pipeline, _requests(e, m)) for m, e in engines.items()}


MODELS = ["latte", "opensora", "opensora-plan"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parallel_run_equals_one_process(engines, single, layout):
    """Every model in one process group per layout (a group's start costs a few seconds of the suite)."""
    jobs = [(engines[m].pipeline_spec(), _requests(engines[m], m)) for m in MODELS]
    per_rank = run_local(_rank_of_every_model, layout.world_size, jobs, layout, timeout_s=480)
    for index, model in enumerate(MODELS):
        _check_model_run(model, layout, [outputs[index] for outputs in per_rank], single[model])


def _check_model_run(model: str, layout: ParallelConfig, outputs: list, single_run: tuple) -> None:
    """One model's parallel run (``outputs``: per rank, its results and latents) against its one-process run."""
    ref_results, ref_latents = single_run
    for rank, (results, latents) in enumerate(outputs):
        for got, want in zip(latents, ref_latents):
            assert_close_to_scale(got, want, f"{model}, rank {rank}")
        if rank == 0:
            for res, ref in zip(results, ref_results):
                assert res.frames.shape == ref.frames.shape
                assert np.abs(res.frames.astype(int) - ref.frames.astype(int)).max() <= 1
                assert res.pab_stats == ref.pab_stats
        else:
            assert results == [None, None]  # only the driver returns the video

    off, on = outputs[0][0]
    kind = SP_KIND[model]
    for result in (off, on):
        stats = result.comm_stats
        assert stats["broadcast"]["calls"] >= 1  # the driver's text embeddings, sent once
        if layout.sp > 1:
            # every computed attention of the SP kind does 2 all-to-alls on each rank; broadcast steps none
            computed = result.pab_stats[kind]["computed"]
            assert stats["all_to_all"]["calls"] == layout.world_size * 2 * computed
        else:
            assert "all_to_all" not in stats
        if layout.cfg:
            assert stats["cfg_all_gather"]["calls"] > 0
    if layout.sp > 1:
        assert on.pab_stats[kind]["broadcast"] > 0
        assert on.comm_stats["all_to_all"]["bytes"] < off.comm_stats["all_to_all"]["bytes"]


def test_cfg_parallel_needs_guidance(engines):
    engine = engines["latte"]
    pipeline = engine.load()._executor.pipeline
    saved = pipeline.parallel
    try:
        pipeline.parallel = ParallelState(config=ParallelConfig(cfg=True))
        with pytest.raises(RequestError, match="CFG parallel"):
            pipeline.check(engine.make_request("a cat", guidance=1.0))
    finally:
        pipeline.parallel = saved


def test_cfg_parallel_with_guidance_one_fails_every_rank_before_work(engines):
    engine = engines["latte"]
    request = engine.make_request("a cat", guidance=1.0, steps=2)
    with pytest.raises(RankError, match="CFG parallel"):
        run_local(_rank, 2, engine.pipeline_spec(), ParallelConfig(cfg=True), [request], timeout_s=120)


@pytest.mark.parametrize("kwargs, message", [({"sp": 0}, "sp: 0 not allowed"), ({"sp": 2.5}, "sp: 2.5"),
                                             ({"cfg": "yes"}, "cfg_parallel: 'yes'")])
def test_bad_layouts_are_named(kwargs, message):
    with pytest.raises(ParallelConfigError, match=message):
        ParallelConfig(**kwargs)


def test_a_layout_needs_its_ranks():
    with pytest.raises(ParallelConfigError, match="torch.distributed is not initialised"):
        ParallelState.create(ParallelConfig(sp=2))
    assert ParallelState.create(ParallelConfig()).world_size == 1
