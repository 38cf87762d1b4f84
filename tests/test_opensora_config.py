"""Open-Sora's model config: size table, frame names, request validation and the PAB presets' schedule."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from videosys.config import project_root
from videosys.errors import RequestError
from videosys.pab import MLPBroadcast, PABScheduler, resolve_pab
from videosys.pab.scheduler import MLP_REUSE, MLP_STORE
from videosys.registry import default_registry
from videosys.request import build_request
from videosys.schedulers.rflow import RFlowSchedule

RESOLUTIONS = ("144p", "240p", "360p", "480p", "720p")
ASPECTS = ("9:16", "16:9", "3:4", "4:3", "1:1")


@pytest.fixture(scope="module")
def config():
    return default_registry().get("opensora").load_config()


def request(config, **overrides):
    return build_request("a cat", config, resolve_pab(None, config.pab), overrides)


def test_registered_with_aliases():
    registry = default_registry()
    assert "opensora" in registry.names()
    for alias in ("open-sora", "opensora-1.2", "Open-Sora"):
        assert registry.get(alias).name == "opensora"
    assert registry.get("opensora").config_path == project_root() / "configs" / "opensora.yaml"


def test_defaults_are_the_reference(config):
    r = request(config)
    assert (r.height, r.width, r.frames, r.steps, r.guidance, r.fps) == (480, 854, 51, 30, 7.0, 24)
    assert (r.resolution, r.aspect) == ("480p", "9:16")
    assert config.text_max_length == 300 and config.text["aesthetic_score"] == 6.5
    assert config.pab.default == "pab246"


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("aspect", ASPECTS)
def test_every_resolution_has_the_main_aspects(config, resolution, aspect):
    r = request(config, resolution=resolution, aspect=aspect)
    h, w = r.height, r.width
    num, den = (int(x) for x in aspect.split(":"))
    assert h / w == pytest.approx(num / den, rel=0.03)  # aspect is height:width, as the reference
    base = {"144p": 144, "240p": 240, "360p": 360, "480p": 480, "720p": 720}[resolution]
    assert min(h, w) >= base * 0.74 and h * w == pytest.approx(base * base * 16 / 9, rel=0.04)


def test_known_sizes(config):
    assert (request(config, resolution="720p", aspect="16:9").height, request(config, resolution="720p", aspect="16:9").width) == (1280, 720)
    assert request(config, resolution="144p").width == 256  # aspect from the defaults
    r = request(config, aspect="1:1")
    assert (r.resolution, r.height, r.width) == ("480p", 640, 640)
    r = request(config, height=240, width=426)  # an explicit size of the table is named
    assert (r.resolution, r.aspect) == ("240p", "9:16")


@pytest.mark.parametrize("frames, n", [("2s", 51), ("4s", 102), ("8s", 204), ("16s", 408), (1, 1), (60, 60), ("17", 17)])
def test_frames(config, frames, n):
    assert request(config, frames=frames).frames == n


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"resolution": "1080p"}, r"resolution: '1080p' not allowed \(allowed: 144p, 240p, 360p, 480p, 720p for opensora\)"),
        ({"aspect": "7:5"}, r"aspect: '7:5' not allowed \(allowed: 3:8, .*9:16.*1:1.*16:9.* at 480p \(height:width\)\)"),
        ({"resolution": "480p", "height": 480}, r"resolution.*either resolution/aspect or height/width"),
        ({"height": 500, "width": 500}, r"height x width: '500x500' not allowed \(allowed: resolutions 144p, 240p"),
        ({"frames": "3s"}, r"frames: '3s' not allowed \(allowed: any integer from 1 to 408, '2s' \(51\), '4s' \(102\)"),
        ({"frames": 409}, r"frames: 409 not allowed"),
        ({"frames": 0}, r"frames: 0 not allowed"),
        ({"negative_prompt": "blurry"}, r"negative_prompt: 'blurry' not allowed \(allowed: an empty string for opensora"),
    ],
)
def test_bad_sizes_are_rejected_with_what_is_allowed(config, overrides, pattern):
    with pytest.raises(RequestError, match=pattern):
        request(config, **overrides)


def _key_calls(plan):
    return [i for i, a in enumerate(plan.mlp_actions) if a == MLP_STORE]


def test_pab246_on_the_reference_schedule(config):
    pab = config.pab.get("pab246")
    assert pab.spatial.window == (450.0, 930.0) and (pab.spatial.range, pab.temporal.range, pab.cross.range) == (2, 4, 6)
    schedule = RFlowSchedule.create(30, 480, 854, 51)
    plan = PABScheduler(pab).plan(schedule.model_timesteps)
    assert _key_calls(plan) == [13, 17, 21]  # t = 864, 788, 676
    assert [i for i, a in enumerate(plan.mlp_actions) if a == MLP_REUSE] == [14, 15, 18, 19, 22, 23]
    # window calls 9-25; broadcast where call % range != 0
    assert [i for i, b in enumerate(plan.broadcast["spatial"]) if b] == [i for i in range(9, 26) if i % 2]
    assert [i for i, b in enumerate(plan.broadcast["temporal"]) if b] == [i for i in range(9, 26) if i % 4]
    assert [i for i, b in enumerate(plan.broadcast["cross"]) if b] == [i for i in range(9, 26) if i % 6]
    # the exact reference rule gives the same plan on this schedule
    exact = replace(pab, mlp=replace(pab.mlp, match="exact"))
    assert PABScheduler(exact).plan(schedule.model_timesteps).mlp_actions == plan.mlp_actions


@pytest.mark.parametrize("steps, size, frames", [(60, (480, 854), 51), (20, (480, 854), 51), (30, (144, 256), 51),
                                                 (30, (720, 1280), 102), (45, (240, 426), 1)])
def test_mlp_broadcast_survives_other_schedules(config, steps, size, frames, caplog):
    pab = config.pab.get("pab246")
    ts = RFlowSchedule.create(steps, *size, frames).model_timesteps
    plan = PABScheduler(pab).plan(ts)
    keys = _key_calls(plan)
    assert len(keys) == 3 and all(MLP_REUSE in plan.mlp_actions[k + 1:k + 2] for k in keys)
    assert [abs(ts[k] - key) == min(abs(t - key) for t in ts) for k, key in zip(keys, (864, 788, 676))] == [True] * 3
    # the reference's exact matching would silently switch it off; we at least say so
    exact = replace(pab, mlp=replace(pab.mlp, match="exact"))
    with caplog.at_level(logging.WARNING, logger="videosys.pab.scheduler"):
        exact_plan = PABScheduler(exact).plan(ts)
    if not any(int(t) in (864, 788, 676) for t in ts):
        assert all(a != MLP_STORE for a in exact_plan.mlp_actions)
        assert "match no denoiser call" in caplog.text and "match: nearest" in caplog.text


def test_nearest_keys_outside_the_schedule_are_reported(caplog):
    mlp = MLPBroadcast(timesteps=(990.0, 5.0), blocks=(0,), match="nearest")
    from videosys.pab import PABConfig

    with caplog.at_level(logging.WARNING, logger="videosys.pab.scheduler"):
        plan = PABScheduler(PABConfig(mlp=mlp)).plan([900.0, 500.0, 100.0])
    assert "[990, 5]" in caplog.text
    assert MLP_STORE not in plan.mlp_actions


@pytest.mark.parametrize("name, ranges", [("pab246", (2, 4, 6)), ("pab357", (3, 5, 7)), ("pab579", (5, 7, 9))])
def test_presets(config, name, ranges):
    pab = config.pab.get(name)
    assert (pab.spatial.range, pab.temporal.range, pab.cross.range) == ranges
    assert pab.mlp.timesteps == (864.0, 788.0, 676.0) and pab.mlp.blocks == (0, 1, 2, 3, 4) and pab.mlp.skip_count == 2
