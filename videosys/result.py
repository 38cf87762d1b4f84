"""What a generation returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io.video import save_video
from .request import GenerationRequest


@dataclass
class GenerationResult:
    """The frames of one video and how they were made.

    ``frames`` is uint8 [T, H, W, 3]; ``timings`` are seconds per stage (text_encoder, denoise, vae_decode,
    total); ``pab_stats`` gives per kind (spatial, temporal, cross, mlp) the module calls computed and
    broadcast in this request and ``pab_peak_kept_bytes`` the most bytes PAB's kept outputs held at once (on the
    driver rank); ``comm_stats`` (parallel runs only) gives per collective kind the calls and
    bytes all ranks of the request sent (``"total"`` sums them); ``replayed_calls`` counts its denoiser calls
    replayed from CUDA graphs (:mod:`videosys.pipelines.cuda_graph`).
    """

    frames: np.ndarray
    fps: int
    request: GenerationRequest
    timings: dict[str, float] = field(default_factory=dict)
    pab_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    pab_peak_kept_bytes: int = 0
    model: str = ""
    comm_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    replayed_calls: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write the video; the format follows the extension (.mp4, .gif, or no extension for PNG frames)."""
        return save_video(self.frames, path, self.fps)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.request.prompt,
            "seed": self.request.seed,
            "frames": list(self.frames.shape),
            "pab": self.request.pab.label,
            "pab_peak_kept_bytes": self.pab_peak_kept_bytes,
            "timings": dict(self.timings),
            "pab_stats": {k: dict(v) for k, v in self.pab_stats.items()},
            "comm_stats": {k: dict(v) for k, v in self.comm_stats.items()},
            "replayed_calls": self.replayed_calls,
        }
