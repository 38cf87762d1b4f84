"""What the tiny-checkpoint writers share: seeded random weights, GroupNorm sizing, and writing a checkpoint
folder without ever deleting a folder that is not an earlier checkpoint of the same kind."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["config_field_is", "extra_file_targets", "norm_groups", "prepare_output_dir", "randomize_parameters"]

_WEIGHT_STD_RANGE = (0.02, 0.2)
_VECTOR_STD = 0.02
_NORM_WEIGHT_STD = 0.05


@torch.no_grad()
def randomize_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter of ``module`` from ``generator``, in place.

    * matrices and convolution kernels: ``N(0, std)`` with ``std = 1 / sqrt(fan_in)`` clipped to
      ``[0.02, 0.2]``;
    * one-dimensional ``*weight`` parameters (norm scales): ``1 + N(0, 0.05)``;
    * all other parameters (biases, scalars): ``N(0, 0.02)``.

    Values are drawn in float32 in the order of ``named_parameters()`` (tied parameters once), then cast to
    each parameter's dtype, so the result only depends on the module structure and the generator state.
    (Official inits zero several projections, which would make a tiny model blind to its inputs.)
    """
    low, high = _WEIGHT_STD_RANGE
    for name, param in module.named_parameters():
        shape = tuple(param.shape)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if param.ndim >= 2:
            fan_in = param.numel() // shape[0]
            values = noise * min(max(1.0 / math.sqrt(max(fan_in, 1)), low), high)
        elif param.ndim == 1 and name.endswith("weight"):
            values = 1.0 + noise * _NORM_WEIGHT_STD
        else:
            values = noise * _VECTOR_STD
        param.copy_(values.to(param.dtype))


def norm_groups(channels: Sequence[int]) -> int:
    """The largest of 32, 16, ..., 2 GroupNorm groups dividing every entry of ``channels`` and leaving at
    least two channels per group (the real VAEs have 128 / 32 = 4 in their first block); else 1."""
    for groups in (32, 16, 8, 4, 2):
        if all(c % groups == 0 for c in channels) and groups * 2 <= min(channels):
            return groups
    return 1


def extra_file_targets(root: Path, extra_files: Mapping[str, str]) -> dict[Path, str]:
    """Map each ``extra_files`` name to its path below ``root``; reject names that leave it."""
    targets: dict[Path, str] = {}
    for name, text in extra_files.items():
        relative = Path(name)
        if relative.is_absolute() or not relative.parts or ".." in relative.parts:
            raise ValueError(f"extra file {name!r} must be a relative path inside the checkpoint")
        targets[root / relative] = text
    return targets


def config_field_is(path: Path, key: str, value: object) -> bool:
    """Whether ``path`` is a JSON object file whose ``key`` equals ``value``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(key) == value


def prepare_output_dir(path: Path, overwrite: bool, *, is_ours: Callable[[Path], bool], what: str) -> None:
    """Create ``path`` for a new checkpoint. A non-empty folder is replaced only with ``overwrite`` and only
    when ``is_ours(path)`` says it is an earlier checkpoint of this kind (``what`` names that kind)."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not is_ours(path):
            raise FileExistsError(f"refusing to overwrite {path}: it is not empty and not {what}")
        if not overwrite:
            raise FileExistsError(f"{path} already holds {what} (pass overwrite=True to replace it)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
