"""Helpers the test modules share (not fixtures)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from videosys import VideoSysEngine
from videosys.pab import PABConfig, PABScheduler, PABStats


def pipeline_of(engine: VideoSysEngine):
    """The loaded local pipeline of an engine (tests look inside it)."""
    return engine.load()._executor.pipeline


def stdit3_pab_calls(model: torch.nn.Module, pab: PABConfig,
                     schedule: Sequence[float]) -> tuple[list[torch.Tensor], PABStats]:
    """A tiny STDiT3's outputs over the denoiser calls at ``schedule`` through one PAB run (fixed inputs:
    3 frames of 4 x 4 latents, two captions of 5 and 3 tokens), and the run's counters."""
    from tests.test_stdit3 import make_inputs

    x = make_inputs(frames=3, height=4, width=4, lens=(5, 3))
    outs = []
    with torch.no_grad(), PABScheduler(pab).new_run(schedule) as run:
        for t in schedule:
            run.begin_call()
            outs.append(model(**{**x, "timestep": torch.tensor([t, t])}, pab=run))
        assert run.kept_bytes == 0  # the last call keeps nothing: no call after it broadcasts
    return outs, run.stats
