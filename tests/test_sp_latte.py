"""Sequence parallel in the Latte transformer (and Open-Sora-Plan's subclass): frames sharded over 2 and 3 gloo
ranks (counts that do not divide, fewer frames than ranks), the whole output on every rank equal to one process
within 1e-5, with and without PAB, and the all-to-alls counted: two per computed temporal attention, none on a
temporal broadcast step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pytest
import torch

from videosys.models.latte import LatteConfig, LatteTransformer3D
from videosys.models.opensora_plan import OpenSoraPlanConfig, OpenSoraPlanTransformer3D
from videosys.pab import PABConfig, PABScheduler
from videosys.parallel import ParallelConfig, ParallelState
from videosys.parallel.launch import run_local
from videosys.testing.common import randomize_parameters

TOL = dict(atol=1e-5, rtol=1e-5)
NUM_LAYERS = 2
TEXT_LEN = 6

# 8 calls, every attention kind broadcast on odd calls, the MLPs of block 0 kept at t=700 and reused twice
PAB = {"window": [0, 1000], "spatial_range": 2, "temporal_range": 2, "cross_range": 2,
       "mlp": {"timesteps": [700], "blocks": [0], "skip_count": 2}}
PAB_TIMESTEPS = [900, 800, 700, 600, 500, 400, 300, 200]


@dataclass(frozen=True)
class Case:
    """One check: a model, a batch, a frame count; ``pab`` runs the 8-call loop instead of one forward."""

    model: str  # "latte" or "osp56" (Open-Sora-Plan, video_length 56: temporal table scale 3)
    batch: int
    frames: int
    masked: bool = True
    pab: bool = False


SP2_CASES = {
    "b1_f5": Case("latte", 1, 5),
    "b2_f5": Case("latte", 2, 5),
    "b2_f1": Case("latte", 2, 1),
    "osp_b2_f7": Case("osp56", 2, 7, masked=False),
    "osp_b1_f1": Case("osp56", 1, 1, masked=False),
    "pab_b2_f5": Case("latte", 2, 5, pab=True),
}
SP3_CASES = {
    "b1_f4": Case("latte", 1, 4),
    "b2_f4": Case("latte", 2, 4),
    "b2_f2": Case("latte", 2, 2),  # the third rank holds only padding
    "pab_b2_f4": Case("latte", 2, 4, pab=True),
}


def _model(kind: str) -> LatteTransformer3D:
    sizes = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=NUM_LAYERS,
                 cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16, norm_eps=1e-6)
    if kind == "latte":
        model: LatteTransformer3D = LatteTransformer3D(LatteConfig(video_length=4, **sizes))
    else:
        model = OpenSoraPlanTransformer3D(OpenSoraPlanConfig(video_length=56, **sizes))
        assert model.config.temporal_scale == 3.0
    randomize_parameters(model, torch.Generator().manual_seed(0))
    return model.eval()


def _inputs(case: Case, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    mask = None
    if case.masked:
        mask = torch.ones(case.batch, TEXT_LEN, dtype=torch.bool)
        mask[-1, 3:] = False  # the last video sees only its first 3 text tokens
    return dict(
        hidden_states=torch.randn(case.batch, 4, case.frames, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(case.batch, TEXT_LEN, 16, generator=g),
        encoder_attention_mask=mask,
    )


def _run_case(case: Case, parallel: Optional[ParallelState]) -> list[dict[str, Any]]:
    """Per forward call: the output, and (under SP) the collectives of that call and the temporal attentions
    computed in it."""
    model = _model(case.model)
    timesteps = PAB_TIMESTEPS if case.pab else [500]
    run = PABScheduler(PABConfig.from_dict(PAB)).new_run(timesteps) if case.pab else None
    calls = []
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            temporal_before = 0
            if run is not None:
                run.begin_call()
                temporal_before = run.stats.computed["temporal"]
            if parallel is not None:
                parallel.stats.reset()
            out = model(**_inputs(case, seed=1 + i), timestep=torch.full((case.batch,), t), pab=run, parallel=parallel)
            calls.append({
                "out": out,
                "all_to_all": None if parallel is None else parallel.stats.calls("all_to_all"),
                "all_gather": None if parallel is None else parallel.stats.calls("all_gather"),
                "temporal_computed": NUM_LAYERS if run is None else run.stats.computed["temporal"] - temporal_before,
            })
    if run is not None:
        run.close()
    return calls


def _rank_main(rank: int, world_size: int, cases: dict[str, Case]) -> dict[str, list[dict[str, Any]]]:
    torch.set_num_threads(1)  # this process only: ranks share the test machine's few cores
    state = ParallelState.create(ParallelConfig(sp=world_size))
    results = {name: _run_case(case, state) for name, case in cases.items()}
    # numpy, not tensors: torch's queue passes tensors through shared memory that dies with this process
    return {name: [{**c, "out": c["out"].numpy()} for c in calls] for name, calls in results.items()}


@pytest.fixture(scope="module")
def single() -> dict[str, list[dict[str, Any]]]:
    return {name: _run_case(case, None) for name, case in {**SP2_CASES, **SP3_CASES}.items()}


@pytest.fixture(scope="module")
def sp2() -> list[dict[str, list[dict[str, Any]]]]:
    return run_local(_rank_main, 2, SP2_CASES, timeout_s=120)


@pytest.fixture(scope="module")
def sp3() -> list[dict[str, list[dict[str, Any]]]]:
    return run_local(_rank_main, 3, SP3_CASES, timeout_s=120)


def _assert_equal_to_single(ranks: list[dict[str, list[dict[str, Any]]]], single: dict, name: str) -> None:
    expected = single[name]
    for rank, results in enumerate(ranks):
        assert len(results[name]) == len(expected)
        for call, (got, want) in enumerate(zip(results[name], expected)):
            out = torch.from_numpy(got["out"])
            assert out.shape == want["out"].shape
            where = f"{name} rank {rank} call {call}"
            torch.testing.assert_close(out, want["out"], **TOL, msg=lambda m, where=where: f"{where}: {m}")


def _assert_comm_per_call(ranks: list[dict[str, list[dict[str, Any]]]], name: str) -> None:
    """Two all-to-alls per computed temporal attention, one all-gather (the exit) per call."""
    for results in ranks:
        for call in results[name]:
            assert call["all_to_all"] == 2 * call["temporal_computed"]
            assert call["all_gather"] == 1


# -- one process: sp 1 is the plain path --------------------------------------------------------------------


def test_sp1_state_is_bit_identical_to_no_state() -> None:
    case = Case("latte", 2, 3)
    model = _model("latte")
    x = _inputs(case, seed=1)
    with torch.no_grad():
        plain = model(**x, timestep=torch.tensor([500, 20]))
        with_state = model(**x, timestep=torch.tensor([500, 20]), parallel=ParallelState.single())
    assert torch.equal(plain, with_state)


# -- SP 2 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["b1_f5", "b2_f5"])
def test_sp2_frames_not_dividing(sp2, single, name: str) -> None:
    _assert_equal_to_single(sp2, single, name)
    _assert_comm_per_call(sp2, name)
    assert sp2[0][name][0]["all_to_all"] == 2 * NUM_LAYERS


def test_sp2_one_frame(sp2, single) -> None:
    _assert_equal_to_single(sp2, single, "b2_f1")
    _assert_comm_per_call(sp2, "b2_f1")


@pytest.mark.parametrize("name", ["osp_b2_f7", "osp_b1_f1"])
def test_sp2_open_sora_plan_scaled_table(sp2, single, name: str) -> None:
    _assert_equal_to_single(sp2, single, name)


def test_sp2_pab_loop(sp2, single) -> None:
    _assert_equal_to_single(sp2, single, "pab_b2_f5")
    _assert_comm_per_call(sp2, "pab_b2_f5")
    per_call = [c["all_to_all"] for c in sp2[0]["pab_b2_f5"]]
    assert per_call == [2 * NUM_LAYERS, 0] * 4  # temporal broadcast on every odd call: no all-to-all


# -- SP 3 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["b1_f4", "b2_f4", "b2_f2"])
def test_sp3_frames_not_dividing(sp3, single, name: str) -> None:
    _assert_equal_to_single(sp3, single, name)
    _assert_comm_per_call(sp3, name)


def test_sp3_pab_loop(sp3, single) -> None:
    _assert_equal_to_single(sp3, single, "pab_b2_f4")
    _assert_comm_per_call(sp3, "pab_b2_f4")
    assert [c["all_to_all"] for c in sp3[2]["pab_b2_f4"]] == [2 * NUM_LAYERS, 0] * 4
