"""The PAB rule (reference/pab.md) as tables, and the per-request run: skipping, counting, freeing."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from videosys.pab import PABConfig, PABConfigError, PABPresets, PABScheduler, resolve_pab
from videosys.pab.scheduler import MLP_COMPUTE, MLP_REUSE, MLP_STORE

DDIM50 = [980 - 20 * i for i in range(50)]  # Latte-1: DDIM, 50 steps, "leading" spacing
LATTE_MLP = {"timesteps": [720, 640, 560, 480, 400], "blocks": [0, 1, 2, 3, 4], "skip_count": 2}
PAB236 = {"window": [100, 800], "spatial_range": 2, "temporal_range": 3, "cross_range": 6, "mlp": LATTE_MLP}


def reference_broadcast(t: float, i: int, lo: float, hi: float, r: int) -> bool:
    return lo < t < hi and i % r != 0


def test_attention_rule_matches_reference_table():
    plan = PABScheduler(PABConfig.from_dict(PAB236)).plan(DDIM50)
    for kind, r in (("spatial", 2), ("temporal", 3), ("cross", 6)):
        expected = [reference_broadcast(t, i, 100, 800, r) for i, t in enumerate(DDIM50)]
        assert list(plan.broadcast[kind]) == expected
    # window edges are strict: 800 (call 9) and 100 (call 44) are never broadcast, 780 (call 10) may be
    assert DDIM50[9] == 800 and DDIM50[44] == 100
    for kind in ("spatial", "temporal", "cross"):
        assert not plan.broadcast[kind][9] and not plan.broadcast[kind][44]
    assert plan.broadcast["temporal"][10]  # 10 % 3 != 0, 780 inside
    assert sum(plan.broadcast["spatial"]) == 17  # calls 11, 13, ..., 43
    assert sum(plan.broadcast["temporal"]) == 23
    assert sum(plan.broadcast["cross"]) == 28


def test_strict_edges_with_timesteps_on_the_edges():
    cfg = PABConfig.from_dict({"window": [200, 400], "spatial_range": 2})
    plan = PABScheduler(cfg).plan([400, 400, 300, 300, 200, 200])
    assert list(plan.broadcast["spatial"]) == [False, False, False, True, False, False]


def test_range_one_never_broadcasts_and_disabled_kinds_stay_off():
    cfg = PABConfig.from_dict({"window": [0, 1000], "spatial_range": 1, "temporal_range": 2})
    plan = PABScheduler(cfg).plan([500] * 6)
    assert not any(plan.broadcast["spatial"])
    assert plan.broadcast["temporal"] == (False, True, False, True, False, True)
    assert not any(plan.broadcast["cross"])
    assert cfg.cross is None


def test_mlp_exact_keys_store_then_reuse_skip_count_calls():
    plan = PABScheduler(PABConfig.from_dict(PAB236)).plan(DDIM50)
    key_calls = [DDIM50.index(k) for k in LATTE_MLP["timesteps"]]
    assert key_calls == [13, 17, 21, 25, 29]
    for i, action in enumerate(plan.mlp_actions):
        if i in key_calls:
            assert action == MLP_STORE
        elif any(0 < i - k <= 2 for k in key_calls):
            assert action == MLP_REUSE
        else:
            assert action == MLP_COMPUTE


def test_mlp_exact_keys_silently_miss_other_schedules_but_nearest_does_not():
    ts30 = [1001.5 - 1000 * i / 30 for i in range(30)]  # no int(timestep) equals 720, 640, ...
    exact = PABScheduler(PABConfig.from_dict(PAB236)).plan(ts30)
    assert MLP_REUSE not in exact.mlp_actions
    nearest = PABScheduler(PABConfig.from_dict({**PAB236, "mlp": {**LATTE_MLP, "match": "nearest"}})).plan(ts30)
    assert nearest.mlp_actions.count(MLP_STORE) == 5
    # keys are 2.4 calls apart here, so a reuse run ends early where the next key recomputes
    actions = nearest.mlp_actions
    assert actions.count(MLP_REUSE) == 8
    for i, action in enumerate(actions):
        if action == MLP_REUSE:
            assert MLP_STORE in actions[max(0, i - 2):i]


class CountingModel:
    """A stand-in for a model: per block, four broadcastable modules whose calls are counted."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.calls = {"spatial": 0, "temporal": 0, "cross": 0, "mlp": 0}

    def module(self, kind: str, value: float):
        def fn():
            self.calls[kind] += 1
            return torch.full((2, 3), value)

        return fn

    def forward(self, run, step_value: float) -> list[torch.Tensor]:
        outs = []
        for b in range(self.blocks):
            outs.append(run.compute_or_broadcast("spatial", b, self.module("spatial", step_value)))
            outs.append(run.compute_or_broadcast("cross", b, self.module("cross", step_value)))
            outs.append(run.compute_or_broadcast("mlp", b, self.module("mlp", step_value), site="spatial"))
            outs.append(run.compute_or_broadcast("temporal", b, self.module("temporal", step_value)))
            outs.append(run.compute_or_broadcast("mlp", b, self.module("mlp", step_value), site="temporal"))
        return outs


def test_broadcast_skips_compute_and_counts_match_the_plan():
    scheduler = PABScheduler(PABConfig.from_dict(PAB236))
    model = CountingModel(blocks=6)
    with scheduler.new_run(DDIM50) as run:
        for i, _ in enumerate(DDIM50):
            run.begin_call()
            outs = model.forward(run, float(i))
            if run.plan.broadcast["spatial"][i]:
                assert outs[0][0, 0].item() == i - 1  # the previous call's output was reused
        stats = run.stats.as_dict()
    expected = run.plan.expected_counts({"spatial": 6, "temporal": 6, "cross": 6, "mlp": 6}, mlp_sites=2)
    assert stats == expected
    for kind in ("spatial", "temporal", "cross", "mlp"):
        assert model.calls[kind] == stats[kind]["computed"]
        assert stats[kind]["broadcast"] > 0
    assert stats["mlp"]["broadcast"] == 5 * 2 * 5 * 2  # 5 keys x 2 reuses x 5 listed blocks x 2 sites


def test_add_or_broadcast_asks_for_outputs_only_where_they_are_kept_and_matches_compute_or_broadcast():
    """The residual form: the same decisions and counters as compute_or_broadcast, the output asked for only
    on calls that keep it (or with an observer), a broadcast adding the kept output to the residual."""
    scheduler = PABScheduler(PABConfig.from_dict(PAB236))
    residual = torch.full((2, 3), 1000.0)
    asked = []

    def module(kind: str, value: float):
        def fn(want: bool):
            asked.append(want)
            out = torch.full((2, 3), value)
            return residual + out, (out if want else None)

        return fn

    made = []

    def make_residual() -> torch.Tensor:
        made.append(1)
        return residual

    with scheduler.new_run(DDIM50) as plain, scheduler.new_run(DDIM50) as fused:
        for i, _ in enumerate(DDIM50):
            plain.begin_call()
            fused.begin_call()
            for b in range(3):
                for kind, site in (("spatial", ""), ("mlp", "spatial"), ("temporal", "")):
                    want = residual + plain.compute_or_broadcast(kind, b, lambda i=i: torch.full((2, 3), float(i)), site)
                    n, made_before = len(asked), len(made)
                    # the MLP's residual as a function that makes it (STDiT3 forms x + cross in the MLP's kernel)
                    given = make_residual if kind == "mlp" else residual
                    got = fused.add_or_broadcast(kind, b, given, module(kind, float(i)), site)
                    assert torch.equal(got, want), (i, kind, b)
                    # the function runs on broadcast calls only, once
                    assert len(made) - made_before == (kind == "mlp" and len(asked) == n), (i, kind, b)
                    if len(asked) > n:  # computed: the output is asked for exactly when this call keeps it
                        plan = fused.plan
                        keeps = (b in plan.mlp_blocks and plan.mlp_actions[i] == MLP_STORE if kind == "mlp"
                                 else plan.keep[kind][i])
                        assert asked[-1] == keeps, (i, kind, b)
            assert fused.kept_bytes == plain.kept_bytes
    assert fused.stats.as_dict() == plain.stats.as_dict()
    assert fused.stats.peak_kept_bytes == plain.stats.peak_kept_bytes
    assert True in asked and False in asked
    assert made  # PAB236 broadcasts MLPs: the function ran

    # an observer sees every computed output, so it is always asked for
    seen = []
    observed = PABScheduler(PABConfig.from_dict(PAB236)).new_run(DDIM50, observer=lambda *a: seen.append(a[-1]))
    with observed as run:
        run.begin_call()
        asked.clear()
        run.add_or_broadcast("spatial", 0, residual, module("spatial", 7.0))
    assert asked == [True] and torch.equal(seen[0], torch.full((2, 3), 7.0))

    # a module that returns no output where one must be kept is an error, not a silent miss
    with scheduler.new_run(DDIM50) as run:
        keep_call = run.plan.keep["spatial"].index(True)
        for _ in range(keep_call + 1):
            run.begin_call()
        with pytest.raises(RuntimeError, match="returned no output to keep"):
            run.add_or_broadcast("spatial", 0, residual, lambda want: (residual, None))


def test_disabled_config_computes_everything():
    model = CountingModel(blocks=2)
    with PABScheduler(PABConfig.disabled()).new_run(DDIM50) as run:
        for _ in DDIM50:
            run.begin_call()
            model.forward(run, 0.0)
        assert run.cached_entries == 0
    assert all(v == 0 for v in run.stats.broadcast.values())
    assert run.stats.computed["spatial"] == 100 and run.stats.computed["mlp"] == 200


def test_no_tensor_outlives_the_run():
    scheduler = PABScheduler(PABConfig.from_dict({"window": [0, 1000], "spatial_range": 3}))
    refs = []
    with scheduler.new_run([500] * 4) as run:
        for _ in range(2):  # stop mid-request: call 0 stored, call 1 reused, the output is still needed
            run.begin_call()
            out = run.compute_or_broadcast("spatial", 0, lambda: torch.randn(4, 4))
            refs.append(weakref.ref(out))
            del out
        assert run.cached_entries == 1
    assert run.cached_entries == 0
    gc.collect()
    assert all(r() is None for r in refs)


def test_outputs_are_kept_only_while_a_broadcast_needs_them():
    scheduler = PABScheduler(PABConfig.from_dict({"window": [100, 800], "spatial_range": 2}))
    with scheduler.new_run(DDIM50) as run:
        held = []
        for _ in DDIM50:
            run.begin_call()
            run.compute_or_broadcast("spatial", 0, lambda: torch.zeros(1))
            held.append(run.cached_entries)
    assert max(held) == 1
    assert held[:9] == [0] * 9  # before the window nothing is kept
    assert held[-1] == 0


def test_more_calls_than_planned_is_an_error():
    run = PABScheduler(PABConfig.disabled()).new_run([1.0])
    run.begin_call()
    with pytest.raises(RuntimeError, match="exceeds the 1 calls"):
        run.begin_call()


def test_two_runs_do_not_share_state():
    scheduler = PABScheduler(PABConfig.from_dict({"window": [0, 1000], "spatial_range": 2}))
    a, b = scheduler.new_run([500] * 2), scheduler.new_run([500] * 2)
    a.begin_call()
    a.compute_or_broadcast("spatial", 0, lambda: torch.ones(1))
    b.begin_call()
    b.compute_or_broadcast("spatial", 0, lambda: torch.zeros(1))
    a.begin_call()
    b.begin_call()
    assert a.compute_or_broadcast("spatial", 0, lambda: torch.full((1,), 9.0)).item() == 1.0
    assert b.compute_or_broadcast("spatial", 0, lambda: torch.full((1,), 9.0)).item() == 0.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"window": [800, 100], "spatial_range": 2}, "window"),
        ({"window": [100, 800], "spatial_range": 0}, "pab.spatial.range"),
        ({"window": [100, 800], "spatial_range": 2.5}, "pab.spatial.range"),
        ({"spatial": {"range": 2}}, "pab.spatial.window: missing"),
        ({"windoww": [1, 2]}, "unknown key"),
        ({"window": [1, 2], "spatial_range": 2, "mlp": {"timesteps": [], "blocks": [0]}}, "mlp.timesteps"),
        ({"window": [1, 2], "spatial_range": 2, "mlp": {"timesteps": [5], "blocks": [0], "skip_count": 0}}, "mlp.skip_count"),
        ({"window": [1, 2], "spatial_range": 2, "mlp": {"timesteps": [5], "blocks": [0], "match": "fuzzy"}}, "mlp.match"),
    ],
)
def test_bad_configs_name_the_field(spec, message):
    with pytest.raises(PABConfigError, match=message):
        PABConfig.from_dict(spec)


def test_resolve_presets_files_and_off(tmp_path):
    presets = PABPresets.from_dict({"default": "pab236", "presets": {"pab236": PAB236}})
    assert resolve_pab(None, presets).enabled is False
    assert resolve_pab("none", presets).enabled is False
    assert resolve_pab("pab236", presets).name == "pab236"
    assert resolve_pab("default", presets).name == "pab236"
    with pytest.raises(PABConfigError, match=r"'pab999' is not a preset of this model \(allowed: none, pab236"):
        resolve_pab("pab999", presets)
    good = tmp_path / "mine.yaml"
    good.write_text("window: [100, 800]\nspatial_range: 3\n")
    cfg = resolve_pab(str(good), presets)
    assert cfg.name == "mine" and cfg.spatial.range == 3 and cfg.temporal is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: [100, 800\nspatial_range: 3\n")
    with pytest.raises(PABConfigError, match="not valid YAML"):
        resolve_pab(str(bad), presets)
    with pytest.raises(PABConfigError, match="does not exist"):
        resolve_pab(str(tmp_path / "missing.yaml"), presets)


def test_config_round_trips_through_dict():
    cfg = PABConfig.from_dict(PAB236, name="pab236")
    again = PABConfig.from_dict(cfg.to_dict())
    assert again == cfg
