"""RFLOW schedule of Open-Sora 1.2: the resolution/length shift, bf16 model timesteps, step sizes."""

from __future__ import annotations

import math

import pytest

from videosys.schedulers.rflow import RFlowSchedule, bf16_round, latent_frames, length_factor, shift_ratio

# reference/pab.md: 480p 2s, 30 steps, after the shift and bf16 rounding
PUBLISHED_480P_2S = {0: 1000, 1: 992, 13: 864, 14: 848, 15: 828, 16: 808, 17: 788, 18: 764, 19: 736, 20: 708,
                     21: 676, 22: 636}


def test_480p_9x16_2s_timesteps_match_the_published_schedule():
    schedule = RFlowSchedule.create(30, 480, 854, 51)
    assert len(schedule) == 30
    for i, t in PUBLISHED_480P_2S.items():
        assert schedule.model_timesteps[i] == t, (i, schedule.model_timesteps[i])
    # the PAB window (450, 930) covers exactly calls 9-25
    inside = [i for i, t in enumerate(schedule.model_timesteps) if 450 < t < 930]
    assert inside == list(range(9, 26))


def test_shift_ratio_formula():
    assert shift_ratio(512, 512, 1) == pytest.approx(1.0)
    assert shift_ratio(480, 854, 51) == pytest.approx(math.sqrt(480 * 854 / 512**2) * math.sqrt(15))
    assert shift_ratio(480, 854, 102) == pytest.approx(math.sqrt(480 * 854 / 512**2) * math.sqrt(30))
    # the reference's F' = 0 for 2-16 frames would collapse every timestep to 0; we clamp it to 1
    assert length_factor(16) == 1 and length_factor(1) == 1 and length_factor(51) == 15


def test_identity_transform_without_shift_and_step_sizes_sum_to_one():
    plain = RFlowSchedule.create(10, 512, 512, 1)
    assert plain.timesteps == pytest.approx([1000 - 100 * i for i in range(10)])
    for ratio_case in [(30, 480, 854, 51), (7, 144, 256, 102), (50, 720, 1280, 1)]:
        s = RFlowSchedule.create(*ratio_case)
        assert sum(s.dts) == pytest.approx(1.0, abs=1e-6)  # from t=1000 down to 0
        assert all(d > 0 for d in s.dts)
        assert list(s.timesteps) == sorted(s.timesteps, reverse=True)


def test_bigger_and_longer_videos_stay_longer_at_high_noise():
    small = RFlowSchedule.create(30, 144, 256, 51).timesteps
    big = RFlowSchedule.create(30, 720, 1280, 51).timesteps
    long = RFlowSchedule.create(30, 720, 1280, 408).timesteps
    assert all(b >= s for b, s in zip(big, small))
    assert all(lo >= b for lo, b in zip(long, big))


def test_bf16_rounding():
    assert bf16_round(977.3) == 976.0
    assert bf16_round(863.6) == 864.0
    assert bf16_round(143.1) == 143.0


@pytest.mark.parametrize("frames, latent", [(51, 15), (102, 30), (204, 60), (408, 120), (17, 5), (1, 1), (16, 4), (20, 6)])
def test_latent_frames(frames, latent):
    assert latent_frames(frames) == latent


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_step_counts(bad):
    with pytest.raises(ValueError, match="steps"):
        RFlowSchedule.create(bad, 480, 854, 51)
