"""Random full-size weights, for benchmarks and pool runs where the official weights cannot be downloaded.

A component folder that holds a ``config.json`` and a :data:`RANDOM_MARKER` file instead of weight files is
a *random component*: its loader builds the model from the config directly on the target device and draws
every parameter there from a generator seeded by the marker (no host copy, no file I/O), then casts it to
the requested dtype. Every loader (ours in :mod:`videosys.models.weights`, and the T5 / diffusers VAE
loaders of the pipelines) checks for the marker, so a random checkpoint goes through the same pipeline
code as the official one. :mod:`videosys.io.random_checkpoint` writes such folders.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

RANDOM_MARKER = "random_weights.json"
#: parameters whose constructor values are part of the architecture, not learned weights
KEEP_CONSTRUCTED = ("rope.freqs",)

M = TypeVar("M", bound=nn.Module)


def is_random_component(folder: str | Path) -> bool:
    """Whether ``folder`` is a component with random weights (it holds :data:`RANDOM_MARKER`)."""
    return (Path(folder) / RANDOM_MARKER).is_file()


def component_seed(folder: str | Path) -> int:
    """The seed a random component's marker names."""
    path = Path(folder) / RANDOM_MARKER
    try:
        seed = json.loads(path.read_text(encoding="utf-8"))["seed"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a random-weights marker ({{\"seed\": <int>}}): {exc}") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{path}: seed {seed!r} is not an integer")
    return seed


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int) -> None:
    """Draw every parameter in place on its own device: ``N(0, 0.02)`` for matrices and kernels (as the
    reference inits), 1 for one-dimensional ``*weight`` (norm scales), 0 for other vectors (biases).
    Buffers keep their constructed values (tables, VAE shift/scale)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in module.named_parameters():
        if name.endswith(KEEP_CONSTRUCTED):
            continue
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        if param.ndim >= 2:
            param.normal_(0.0, 0.02, generator=gen)
        elif name.endswith("weight"):
            param.fill_(1.0)
        else:
            param.zero_()


def build_random(build: Callable[[], M], folder: str | Path, dtype: torch.dtype | None,
                 device: str | torch.device | None) -> M:
    """``build()`` under ``device`` (default CPU), filled from the folder's seed, cast to ``dtype``, in eval
    mode with no gradients."""
    from .weights import init_nonpersistent_buffers

    device = torch.device(device) if device is not None else torch.device("cpu")
    start = time.perf_counter()
    with torch.device(device):
        model = build()
    fill_random_(model, component_seed(folder))
    if dtype is not None:
        model = model.to(dtype)
    init_nonpersistent_buffers(model, device)
    n = sum(p.numel() for p in model.parameters())
    logger.info("random %s (%.2fB parameters) from %s on %s in %.1f s", type(model).__name__, n / 1e9, folder,
                device, time.perf_counter() - start)
    return model.eval().requires_grad_(False)
