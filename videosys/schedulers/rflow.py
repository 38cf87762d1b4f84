"""Rectified-flow sampling as Open-Sora 1.2 does it (RFLOW, shared reference models.md section 1).

The model predicts a velocity ``v``; with the convention ``x_t = (1 - t/T) x_0 + (t/T) eps`` (``T`` = 1000
training timesteps) one Euler step from ``t_i`` to ``t_{i+1}`` is ``z += v * (t_i - t_{i+1}) / T`` and the
last step goes to 0. The base schedule ``t_i = (1 - i/n) T`` is bent towards high noise by the
resolution- and length-aware transform ``t' = r t^ / (1 + (r - 1) t^)`` (``t^ = t/T``), with
``r = sqrt(H W / 512^2) * sqrt(F')``, ``F' = 5 * (frames // 17)`` for videos and 1 for images: bigger and
longer videos spend more of the schedule at high noise.

The transformer sees every timestep rounded through bfloat16, as the official bf16 model does
(:attr:`RFlowSchedule.model_timesteps`); the step sizes use the unrounded values, as the reference.
PAB windows and MLP keys are defined on the timesteps the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
BASE_RESOLUTION = 512 * 512
FRAMES_PER_CHUNK = 17  # the VAE's micro-chunk: 17 frames -> 5 latent frames
LATENT_FRAMES_PER_CHUNK = 5


def length_factor(num_frames: int) -> int:
    """``F'`` of the timestep transform: ``5 * (frames // 17)`` as the reference, but at least 1.

    The reference uses 1 only for a single image; for 2-16 frames its formula gives 0, so ``r = 0`` and
    every timestep collapses to 0 (the model would never see noise). Clamping to 1 treats such a short
    clip like an image, the nearest sane reading; from 17 frames on the values are the reference's.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: {num_frames} not allowed (allowed: an integer >= 1)")
    return max(1, num_frames // FRAMES_PER_CHUNK * LATENT_FRAMES_PER_CHUNK)


def shift_ratio(height: int, width: int, num_frames: int) -> float:
    """``r = sqrt(H*W / 512^2) * sqrt(F')`` for a video of ``height x width`` pixels and ``num_frames`` frames."""
    if height < 1 or width < 1:
        raise ValueError(f"height x width: {height}x{width} not allowed (allowed: positive pixel sizes)")
    return math.sqrt(height * width / BASE_RESOLUTION) * math.sqrt(length_factor(num_frames))


def transform_timestep(t: float, ratio: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """The resolution/length shift of one timestep ``t`` in ``[0, num_timesteps]``."""
    x = t / num_timesteps
    return ratio * x / (1 + (ratio - 1) * x) * num_timesteps


def bf16_round(t: float) -> float:
    """``t`` as the bfloat16 model sees it (977.3 -> 976.0)."""
    return float(torch.tensor(t, dtype=torch.float32).to(torch.bfloat16).float())


@dataclass(frozen=True)
class RFlowSchedule:
    """The timesteps and Euler step sizes of one request.

    ``timesteps`` (float, unrounded) drive the step sizes ``dts``; ``model_timesteps`` are what the
    transformer and the PAB plan see (bf16-rounded).
    """

    timesteps: tuple[float, ...]
    model_timesteps: tuple[float, ...]
    dts: tuple[float, ...]
    ratio: float

    @classmethod
    def create(
        cls,
        num_steps: int,
        height: int,
        width: int,
        num_frames: int,
        *,
        use_timestep_transform: bool = True,
        num_timesteps: int = NUM_TRAIN_TIMESTEPS,
    ) -> "RFlowSchedule":
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"steps: {num_steps!r} not allowed (allowed: an integer >= 1)")
        ratio = shift_ratio(height, width, num_frames) if use_timestep_transform else 1.0
        base = [(1.0 - i / num_steps) * num_timesteps for i in range(num_steps)]
        # float32 arithmetic as the reference's tensors; the results are exact enough either way
        ts = [float(torch.tensor(transform_timestep(t, ratio, num_timesteps), dtype=torch.float32)) for t in base]
        dts = [(ts[i] - ts[i + 1]) / num_timesteps for i in range(num_steps - 1)] + [ts[-1] / num_timesteps]
        return cls(timesteps=tuple(ts), model_timesteps=tuple(bf16_round(t) for t in ts), dts=tuple(dts), ratio=ratio)

    def __len__(self) -> int:
        return len(self.timesteps)


def latent_frames(num_frames: int) -> int:
    """Latent frames of the Open-Sora VAE v1.2: ``5 * (n // 17) + ceil((n % 17) / 4)`` (51 -> 15, 102 -> 30)."""
    if num_frames < 1:
        raise ValueError(f"num_frames: {num_frames} not allowed (allowed: an integer >= 1)")
    return LATENT_FRAMES_PER_CHUNK * (num_frames // FRAMES_PER_CHUNK) + math.ceil((num_frames % FRAMES_PER_CHUNK) / 4)
