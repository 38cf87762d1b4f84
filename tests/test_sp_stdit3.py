"""Sequence parallel in STDiT3: the spatial tokens split over 2 and 3 gloo ranks give every rank the
single-process output (sizes that do not divide, CFG-style batches with two text masks, fewer frames and
tokens than ranks), also under PAB, where a spatial broadcast step skips its all-to-alls.

Each world size is spawned once (module fixture); the rank function runs every check and returns plain
arrays and counters, compared here with the single-process run.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import torch

from videosys.models.opensora.stdit3 import STDiT3
from videosys.pab import PABConfig, PABScheduler
from videosys.parallel import ParallelConfig, ParallelState
from videosys.parallel.launch import run_local
from videosys.testing.tiny_stdit3 import make_stdit3

SEED = 3
DEPTH = 2
CAP = 32  # the tiny model's caption channels
ATOL = 1e-5

#: name -> input sizes. Patch (1, 2, 2): S = ceil(height / 2) * ceil(width / 2) tokens per frame.
CASES: dict[str, dict[str, Any]] = {
    # CFG batch (two text lengths), odd latent size padded by the patch embed: S = 5 * 5 = 25 (divides
    # neither 2 nor 3), T = 4 (3 ranks: the last holds only padding frames in the spatial attention).
    "cfg_batch": {"batch": 2, "frames": 4, "height": 9, "width": 10, "lens": (7, 3)},
    # batch 1: S = 2 * 7 = 14 (does not divide by 3), T = 3 (does not divide by 2).
    "batch_1": {"batch": 1, "frames": 3, "height": 4, "width": 13, "lens": (5,)},
    # more ranks than frames and than tokens: T = 1, S = 1.
    "one_frame_one_token": {"batch": 2, "frames": 1, "height": 2, "width": 2, "lens": (4, 2)},
}

#: the PAB loop: S = 3 * 5 = 15, T = 3; every kind broadcasts on odd calls, block 1's MLPs around 850 and 450.
PAB_CASE: dict[str, Any] = {"batch": 2, "frames": 3, "height": 5, "width": 9, "lens": (6, 2)}
PAB_TIMESTEPS = [950.0, 850.0, 750.0, 650.0, 550.0, 450.0, 350.0, 250.0]
PAB_SPEC = {
    "window": [100, 1000],
    "spatial_range": 2,
    "temporal_range": 2,
    "cross_range": 2,
    "mlp": {"timesteps": [850, 450], "blocks": [1], "skip_count": 2},
}


def make_inputs(batch: int, frames: int, height: int, width: int, lens: tuple[int, ...],
                seed: int = 1, timestep: Optional[float] = None) -> dict[str, Any]:
    """Seeded inputs; sample ``b`` has ``lens[b]`` valid text tokens."""
    g = torch.Generator().manual_seed(seed)
    length = max(lens)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b, n in enumerate(lens):
        mask[b, :n] = True
    ts = torch.full((batch,), timestep) if timestep is not None else torch.tensor([977.3, 512.0][:batch])
    return {
        "x": torch.randn(batch, 4, frames, height, width, generator=g),
        "timestep": ts,
        "y": torch.randn(batch, length, CAP, generator=g),
        "mask": mask,
    }


def _a2a(parallel: Optional[ParallelState]) -> int:
    return 0 if parallel is None else parallel.stats.calls("all_to_all")


def run_checks(model: STDiT3, parallel: Optional[ParallelState]) -> dict[str, Any]:
    """Every case's output, then the PAB loop's outputs with per-call all-to-all and spatial-compute counts."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, case in CASES.items():
            out[name] = model(**make_inputs(**case), parallel=parallel).numpy()
        if parallel is not None:
            out["stats_plain"] = parallel.stats.as_dict()
        pab_calls = []
        with PABScheduler(PABConfig.from_dict(PAB_SPEC)).new_run(PAB_TIMESTEPS) as run:
            for i, t in enumerate(PAB_TIMESTEPS):
                run.begin_call()
                a2a, spatial = _a2a(parallel), run.stats.computed["spatial"]
                y = model(**make_inputs(**PAB_CASE, seed=10 + i, timestep=t), pab=run, parallel=parallel)
                pab_calls.append((y.numpy(), _a2a(parallel) - a2a, run.stats.computed["spatial"] - spatial))
            out["pab_stats"] = run.stats.as_dict()
        out["pab"] = pab_calls
    return out


def _rank(rank: int, world_size: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    parallel = ParallelState.create(ParallelConfig(sp=world_size))
    out = run_checks(make_stdit3(seed=SEED, depth=DEPTH), parallel)
    if world_size == 2:  # --sp 2 --compile: the block pieces compiled, the all-to-alls left out of the graphs
        from torch._dynamo.utils import counters

        from videosys.models.compile import compile_pieces

        compiled = make_stdit3(seed=SEED, depth=DEPTH)
        compile_pieces(compiled, backend="aot_eager")  # graph capture without C++ code generation (CI)
        counters.clear()
        parallel.stats.reset()
        out["compiled"] = run_checks(compiled, parallel)
        out["recompiles_after_limit"] = sum(n for what, n in counters["unimplemented"].items()
                                            if "recompile limit" in what.lower())
        out["compiled_frames"] = dict(counters["frames"])
    return out


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return run_checks(make_stdit3(seed=SEED, depth=DEPTH), None)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda p: f"sp{p}")
def ranks(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return run_local(_rank, request.param, timeout_s=120)


def test_plain_none_and_single_state_agree(single: dict[str, Any]) -> None:
    """``parallel=ParallelState.single()`` is exactly the ``parallel=None`` path."""
    model = make_stdit3(seed=SEED, depth=DEPTH)
    with torch.no_grad():
        out = model(**make_inputs(**CASES["cfg_batch"]), parallel=ParallelState.single())
    assert np.array_equal(out.numpy(), single["cfg_batch"])


@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_returns_the_single_process_output(single: dict[str, Any], ranks: list[dict[str, Any]],
                                                      case: str) -> None:
    want = single[case]
    for r, got in enumerate(ranks):
        assert got[case].shape == want.shape, f"rank {r}"
        np.testing.assert_allclose(got[case], want, atol=ATOL, rtol=0, err_msg=f"rank {r}")


def test_collectives_per_forward(ranks: list[dict[str, Any]]) -> None:
    """Without PAB: 2 all-to-alls per spatial block and one all-gather per forward, nothing else."""
    forwards = len(CASES)
    for stats in (r["stats_plain"] for r in ranks):
        assert stats["all_to_all"]["calls"] == 2 * DEPTH * forwards
        assert stats["all_gather"]["calls"] == forwards
        assert stats["total"]["calls"] == (2 * DEPTH + 1) * forwards


def test_pab_outputs_and_skipped_all_to_alls(single: dict[str, Any], ranks: list[dict[str, Any]]) -> None:
    stats = single["pab_stats"]
    assert stats["spatial"]["broadcast"] > 0 and stats["temporal"]["broadcast"] > 0
    assert stats["cross"]["broadcast"] > 0 and stats["mlp"]["broadcast"] > 0
    for r, got in enumerate(ranks):
        assert got["pab_stats"] == stats, f"rank {r}"
        for i, ((y, a2a, spatial), (want, _, want_spatial)) in enumerate(zip(got["pab"], single["pab"])):
            np.testing.assert_allclose(y, want, atol=ATOL, rtol=0, err_msg=f"rank {r} call {i}")
            assert spatial == want_spatial
            assert a2a == 2 * spatial, f"rank {r} call {i}: {a2a} all-to-alls, {spatial} spatial computes"
        assert [a2a for _, a2a, _ in got["pab"]] == [2 * DEPTH, 0] * (len(PAB_TIMESTEPS) // 2)


def test_compiled_pieces_under_sp_match_and_keep_the_skipped_all_to_alls(
        single: dict[str, Any], ranks: list[dict[str, Any]]) -> None:
    """``--sp 2 --compile``: the compiled block pieces give the single-process outputs, a PAB broadcast still
    skips the all-to-alls, and the collectives stay outside the graphs (no recompilation storm on the
    communication counters)."""
    if len(ranks) != 2:
        pytest.skip("checked with 2 ranks")
    for r, rank in enumerate(ranks):
        got = rank["compiled"]
        assert rank["compiled_frames"].get("ok", 0) > 0, "nothing was compiled"
        assert rank["recompiles_after_limit"] == 0
        for case in CASES:
            np.testing.assert_allclose(got[case], single[case], atol=ATOL, rtol=0, err_msg=f"rank {r} {case}")
        assert got["pab_stats"] == single["pab_stats"]
        for (y, a2a, _), (want, _, _) in zip(got["pab"], single["pab"]):
            np.testing.assert_allclose(y, want, atol=ATOL, rtol=0, err_msg=f"rank {r}")
        assert [a2a for _, a2a, _ in got["pab"]] == [2 * DEPTH, 0] * (len(PAB_TIMESTEPS) // 2)
