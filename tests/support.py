"""Helpers the test modules share (not fixtures)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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


def kernel_test_models(latte_norm_affine: bool = False) -> dict[str, tuple[torch.nn.Module, dict]]:
    """A tiny STDiT3 and a tiny Latte with random weights, each with the keyword inputs of one forward (4
    and 4 frames, fixed seeds): what the fused-kernel interpreter scripts run on the torch path and with
    the kernels."""
    from videosys.models.latte import LatteConfig, LatteTransformer3D
    from videosys.testing.tiny_stdit3 import make_stdit3

    g = torch.Generator().manual_seed(1)
    stdit3 = make_stdit3(seed=0, num_heads=4, hidden_size=64)
    stdit3_inputs = {"x": torch.randn(2, 4, 5, 4, 6, generator=g), "timestep": torch.tensor([977.3, 40.0]),
                     "y": torch.randn(2, 6, 32, generator=g), "mask": torch.ones(2, 6, dtype=torch.bool)}
    latte = LatteTransformer3D(LatteConfig(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2, caption_channels=16,
        video_length=4, norm_elementwise_affine=latte_norm_affine, norm_eps=1e-6)).eval()
    with torch.no_grad():
        for p in latte.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    latte_inputs = {"hidden_states": torch.randn(2, 4, 4, 8, 8, generator=g), "timestep": torch.tensor([999, 37]),
                    "encoder_hidden_states": torch.randn(2, 5, 16, generator=g)}
    return {"stdit3": (stdit3, stdit3_inputs), "latte": (latte, latte_inputs)}


def run_in_interpreter(script: str) -> dict[str, float]:
    """Run ``tests/<script>`` in a child process under Triton's CPU interpreter; the JSON object it prints."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, str(root / "tests" / script)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# A shell starts background jobs with SIGINT ignored and children inherit that; Python then installs no
# KeyboardInterrupt handler at all. Tests that interrupt a process set up what an interactive run has.
def interruptible_python(target: str, *args: str, module: bool = False) -> list[str]:
    """The command line of a Python child that runs the script (or, with ``module``, the module) ``target``
    with ``args``, SIGINT raising ``KeyboardInterrupt`` in it whatever this test run inherited."""
    run = f"runpy.run_module({target!r}, run_name='__main__')" if module else \
        f"runpy.run_path({target!r}, run_name='__main__')"
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.argv = [{target!r}, *sys.argv[1:]]; {run}")
    return [sys.executable, "-c", code, *args]


@contextmanager
def sigint_raises() -> Iterator[None]:
    """Within the block SIGINT raises ``KeyboardInterrupt`` in this process (Python's own handler), whatever
    this test run inherited; the previous handler afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
