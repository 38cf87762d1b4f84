"""Attention-difference analysis through PAB's hook point, and the calibration rule (videosys.analysis)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from videosys.analysis import (
    DifferenceProfile,
    DifferenceRecorder,
    calibrate,
    record_generation,
    write_pab_yaml,
)
from videosys.analysis.calibrate import stable_window, window_bounds
from videosys.cli import main
from videosys.pab import PABConfig, PABPresets, PABScheduler, resolve_pab

STEPS = 4
KINDS = ["spatial", "temporal", "cross", "mlp"]


class Saver:
    """A second observer: keeps a copy of every computed module output, keyed by module and call."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, str, int], dict[int, np.ndarray]] = {}
        self.timesteps: dict[int, float] = {}

    def __call__(self, call_index, timestep, kind, site, block, output) -> None:
        self.outputs.setdefault((kind, site, block), {})[call_index] = output.detach().double().numpy().copy()
        self.timesteps[call_index] = timestep


@pytest.fixture(scope="module")
def measured(tiny_engine):
    saver = Saver()
    profile, result = record_generation(tiny_engine, "a red fox", steps=STEPS, seed=3, observers=[saver])
    return profile, result, saver


def test_every_kind_layer_and_step_is_recorded(measured):
    profile, result, _ = measured
    assert profile.num_calls == STEPS
    assert profile.kinds == KINDS
    # tiny Latte: 2 spatial + 2 temporal blocks; cross in the spatial blocks; an MLP per block (site = its kind)
    assert [k for k in profile.modules] == [
        ("spatial", "", 0), ("spatial", "", 1), ("temporal", "", 0), ("temporal", "", 1),
        ("cross", "", 0), ("cross", "", 1),
        ("mlp", "spatial", 0), ("mlp", "spatial", 1), ("mlp", "temporal", 0), ("mlp", "temporal", 1),
    ]
    for key, series in profile.modules.items():
        for metric in ("mse", "rel_l2"):
            assert series[metric][0] is None, key  # call 0 has no previous output
            assert all(v is not None and math.isfinite(v) and v > 0 for v in series[metric][1:]), (key, metric)
    assert result.pab_stats["spatial"]["broadcast"] == 0  # recorded with PAB off
    assert result.request.pab.name == "none"


def test_analysis_equals_differences_computed_by_hand(measured):
    profile, _, saver = measured
    assert profile.timesteps == [saver.timesteps[i] for i in range(STEPS)]
    assert set(saver.outputs) == set(profile.modules)
    for key, outs in saver.outputs.items():
        assert sorted(outs) == list(range(STEPS))
        for i in range(1, STEPS):
            diff = outs[i] - outs[i - 1]
            mse = float(np.mean(diff**2))
            rel = float(np.linalg.norm(diff) / np.linalg.norm(outs[i - 1]))
            assert profile.modules[key]["mse"][i] == pytest.approx(mse, rel=1e-5), (key, i)
            assert profile.modules[key]["rel_l2"][i] == pytest.approx(rel, rel=1e-5), (key, i)
    # the per-kind curve is the mean over the kind's layers
    for i in range(1, STEPS):
        by_hand = np.mean([profile.modules[k]["rel_l2"][i] for k in profile.layers("mlp")])
        assert profile.kind_curve("mlp", "rel_l2")[i] == pytest.approx(by_hand)
        assert profile.kind_curve("mlp", "rel_l2", "max")[i] == max(profile.modules[k]["rel_l2"][i] for k in profile.layers("mlp"))


def test_recorder_on_known_outputs():
    """A PAB run with the recorder as observer, fed outputs whose differences are known exactly."""
    rec = DifferenceRecorder()
    outs = [torch.full((2, 3), 1.0), torch.full((2, 3), 3.0), torch.full((2, 3), 3.0) + torch.eye(2, 3)]
    with PABScheduler(PABConfig.disabled()).new_run([900, 500, 100], observer=rec) as run:
        for out in outs:
            run.begin_call()
            run.compute_or_broadcast("spatial", 0, lambda out=out: out)
    p = rec.profile(model="toy")
    assert p.modules[("spatial", "", 0)]["mse"] == [None, 4.0, pytest.approx(2 / 6)]
    assert p.modules[("spatial", "", 0)]["rel_l2"] == [None, pytest.approx(math.sqrt(24 / 6)), pytest.approx(math.sqrt(2) / math.sqrt(54))]
    assert p.timesteps == [900.0, 500.0, 100.0]


def test_observer_sees_only_computed_modules_under_pab():
    seen = []
    cfg = PABConfig.from_dict({"spatial": {"window": [0, 1000], "range": 2}})
    with PABScheduler(cfg).new_run([900, 800, 700], observer=lambda *a: seen.append(a[:5])) as run:
        for _ in range(3):
            run.begin_call()
            run.compute_or_broadcast("spatial", 0, lambda: torch.ones(1))
    assert seen == [(0, 900.0, "spatial", "", 0), (2, 700.0, "spatial", "", 0)]  # call 1 broadcast


def test_profile_files_round_trip(measured, tmp_path):
    profile, _, _ = measured
    loaded = DifferenceProfile.load(profile.save_json(tmp_path / "differences.json").parent)
    assert loaded.modules == profile.modules and loaded.timesteps == profile.timesteps
    assert loaded.meta["model"] == "latte" and loaded.meta["seed"] == 3
    rows = list(csv.DictReader(profile.save_csv(tmp_path / "d.csv").open()))
    assert len(rows) == len(profile.modules) * (STEPS - 1)
    row = next(r for r in rows if r["kind"] == "cross" and r["block"] == "1" and r["call"] == "2")
    assert float(row["rel_l2"]) == profile.modules[("cross", "", 1)]["rel_l2"][2]


def test_analyze_cli_writes_json_csv_and_plots(tiny_latte_dir, tmp_path, capsys):
    out = tmp_path / "an"
    code = main(["analyze", "--model", "latte", "--weights", str(tiny_latte_dir), "--steps", "3", "--seed", "1",
                 "--device", "cpu", "--no-progress", "-o", str(out), "--video", str(tmp_path / "ref")])
    assert code == 0
    data = json.loads((out / "differences.json").read_text())
    assert data["num_calls"] == 3 and data["steps"] == 3 and sorted(data["per_kind"]) == sorted(KINDS)
    assert (out / "differences.csv").is_file()
    for name in ["lines_mse.png", "lines_rel_l2.png", *(f"heatmap_{k}_rel_l2.png" for k in KINDS)]:
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 50
    assert len(list((tmp_path / "ref").glob("frame_*.png"))) == 4
    text = capsys.readouterr().out
    assert "spatial" in text and "rel_l2" in text


# -- calibration on a synthetic profile ----------------------------------------------------------------
N = 20
TS = [float(950 - 50 * i) for i in range(N)]  # 950, 900, ..., 0


def _u(level: float, edge=(0.6, 0.3), tail=(0.3, 0.5, 0.8)) -> list[float | None]:
    """U-shaped: None at call 0, two large early calls, ``level`` for calls 3..16, three large late calls."""
    return [None, *edge, *([level] * 14), *tail]


def synthetic_profile(mlp_levels: dict[int, float] | None = None) -> DifferenceProfile:
    curves = {"spatial": _u(0.04), "temporal": _u(0.03), "cross": _u(0.015)}
    modules = {}
    for kind, curve in curves.items():
        # two layers whose mean is the curve
        modules[(kind, "", 0)] = {"rel_l2": [None if v is None else v * 0.5 for v in curve], "mse": [None if v is None else v for v in curve]}
        modules[(kind, "", 1)] = {"rel_l2": [None if v is None else v * 1.5 for v in curve], "mse": [None if v is None else v for v in curve]}
    for block, level in (mlp_levels or {}).items():
        curve = _u(level)
        modules[("mlp", "spatial", block)] = {"rel_l2": curve, "mse": curve}
    return DifferenceProfile(timesteps=TS, modules=modules, meta={"model": "latte", "steps": N})


def test_window_bounds_select_exactly_the_calls():
    assert window_bounds(TS, 3, 16) == (125.0, 825.0)
    assert window_bounds(TS, 0, 19) == (-1.0, 951.0)
    # PNDM repeats timesteps: a run starting on the second of two equal timesteps is shrunk past them
    pndm = [900.0, 897.0, 897.0, 894.0, 894.0, 891.0, 888.0]
    diffs = [0.0, 0.5, 0.01, 0.01, 0.01, 0.01, 0.5]
    assert stable_window(pndm, diffs, 0.1) == (3, 5)
    lo, hi = window_bounds(pndm, 3, 5)
    assert (lo, hi) == (889.5, 895.5)
    assert [lo < t < hi for t in pndm] == [False, False, False, True, True, True, False]


def test_calibration_of_a_u_shaped_profile_gives_the_expected_windows_and_ranges(tmp_path):
    cal = calibrate(synthetic_profile(), budget=0.1, max_range=8)
    # stable calls 3..16 for every kind (0.3 > 0.1 at the edges); window: midpoints 825 (850|800), 125 (150|100)
    for kind in ("spatial", "temporal", "cross"):
        k = cal.kinds[kind]
        assert k.calls == (3, 16)
        assert k.window == (125.0, 825.0)
    # drift of a range r is (r - 1) * level <= 0.1: spatial 0.04 -> 3, temporal 0.03 -> 4, cross 0.015 -> 7;
    # but cross broadcasts 12 of the 14 window calls with range 6 too (computing 6, 12 instead of 7, 14),
    # and a tie goes to the smaller range
    assert [cal.kinds[k].range for k in ("spatial", "temporal", "cross")] == [3, 4, 6]
    assert cal.kinds["spatial"].max_drift == pytest.approx(0.08)
    assert cal.kinds["cross"].max_drift == pytest.approx(0.075)  # calls 7..11 reuse call 6
    plan = PABScheduler(cal.config).plan(TS)
    assert [i for i, b in enumerate(plan.broadcast["spatial"]) if b] == [4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert [i for i, b in enumerate(plan.broadcast["cross"]) if b] == [3, 4, 5, 7, 8, 9, 10, 11, 13, 14, 15, 16]
    assert cal.kinds["temporal"].broadcast_calls == sum(plan.broadcast["temporal"]) == 10  # 14 calls - 4, 8, 12, 16
    assert cal.config.mlp is None

    path = write_pab_yaml(cal, tmp_path / "mine.yaml", source="synthetic")
    text = path.read_text()
    assert text.startswith("# PAB config written by `videosys calibrate`")
    data = yaml.safe_load(text)
    assert data["spatial"] == {"window": [125.0, 825.0], "range": 3}
    assert data["cross"]["range"] == 6 and data["mlp"] is None
    loaded = PABConfig.from_yaml(path)
    assert loaded == resolve_pab(str(path), PABPresets()) and loaded.spatial == cal.config.spatial
    assert loaded.temporal == cal.config.temporal and loaded.cross == cal.config.cross


def test_smaller_budget_narrows_and_lowers_the_pyramid():
    cal = calibrate(synthetic_profile(), budget=0.035)
    assert cal.kinds["spatial"].calls is None and cal.config.spatial is None  # 0.04 > budget: never stable
    assert cal.kinds["temporal"].range == 2 and cal.kinds["cross"].range == 3  # 0.03 * 1, 0.015 * 2
    # the max aggregate sees layer 1 (1.5 x the curve): cross 0.0225 -> range 2
    assert calibrate(synthetic_profile(), budget=0.035, aggregate="max").kinds["cross"].range == 2


def test_mlp_calibration_picks_the_steady_blocks():
    cal = calibrate(synthetic_profile({0: 0.02, 1: 0.03, 2: 0.2, 3: 0.04}), budget=0.1, mlp=True, mlp_skip=2)
    mlp = cal.config.mlp
    assert mlp is not None and mlp.match == "nearest" and mlp.skip_count == 2
    # blocks by steadiness 0, 1, 3, 2; block 2 never fits (0.4 over 2 calls); 0, 1, 3 fit from call 2 on
    # (d(3) + d(4) <= 0.1) every 3 calls while the next two calls stay in the flat part (<= call 16)
    assert mlp.blocks == (0, 1, 3)
    assert cal.mlp_report["key_calls"] == [2, 5, 8, 11, 14]
    assert list(mlp.timesteps) == [TS[c] for c in (2, 5, 8, 11, 14)]
    assert cal.mlp_report["max_drift"] == pytest.approx(0.08)
    actions = PABScheduler(cal.config).plan(TS).mlp_actions
    assert [i for i, a in enumerate(actions) if a == "reuse"] == [3, 4, 6, 7, 9, 10, 12, 13, 15, 16]


def test_calibrate_cli_from_an_analysis_folder(tmp_path, capsys):
    folder = tmp_path / "an"
    synthetic_profile({0: 0.02}).save_json(folder / "differences.json")
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", "--model", "latte", "--from", str(folder), "--budget", "0.1", "--mlp", "-o", str(out)]) == 0
    config = PABConfig.from_yaml(out)
    assert config.name == "cal" and config.spatial.range == 3 and config.mlp.blocks == (0,)
    assert "spatial" in capsys.readouterr().out


def test_calibrated_yaml_drives_a_generation(tiny_engine, measured, tmp_path):
    profile, _, _ = measured
    cal = calibrate(profile, budget=10.0, max_range=2)  # the tiny model's random weights: a loose budget
    path = write_pab_yaml(cal, tmp_path / "tiny.yaml")
    result = tiny_engine.generate("a red fox", steps=STEPS, seed=3, pab=str(path))
    plan = PABScheduler(PABConfig.from_yaml(path)).plan(profile.timesteps)
    expected = plan.expected_counts({"spatial": 2, "temporal": 2, "cross": 2, "mlp": 2}, mlp_sites=2)
    assert result.pab_stats["spatial"] == expected["spatial"] and expected["spatial"]["broadcast"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--from", "nowhere"], "does not exist"),
    (["--budget", "0"], "budget: 0.0 not allowed"),
    (["-o", "x.txt"], "must end in .yaml"),
])
def test_calibrate_bad_inputs_are_one_line_errors(tmp_path, capsys, argv, message):
    folder = tmp_path / "an"
    synthetic_profile().save_json(folder / "differences.json")
    base = ["calibrate", "--model", "latte", "--from", str(folder), "-o", str(tmp_path / "c.yaml")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_calibrate_refuses_another_models_measurement(tmp_path, capsys):
    synthetic_profile().save_json(tmp_path / "differences.json")
    assert main(["calibrate", "--model", "opensora", "--from", str(tmp_path), "-o", str(tmp_path / "c.yaml")]) == 2
    assert "measured on 'latte', not 'opensora'" in capsys.readouterr().err
