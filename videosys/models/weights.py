"""Loading a diffusers-style model folder (``config.json`` + weights) into any ``nn.Module``.

The folder holds ``config.json`` and one of (tried in this order, ``W`` = the weights name, by default
``diffusion_pytorch_model``)::

    W.safetensors            W.safetensors.index.json       (sharded; the index maps key -> shard file)
    W.fp16.safetensors       W.safetensors.index.fp16.json
    W.bin                    W.bin.index.json               (torch.load with weights_only=True)
    W.fp16.bin               W.bin.index.fp16.json

With an explicit ``variant`` only that variant's files are tried. The model is built on the meta device
(no parameter initialisation cost), the checkpoint is checked key by key against the model (missing,
unexpected and wrongly shaped keys are reported together, by name), and the tensors are assigned in
place. Non-persistent buffers (position tables) are then rebuilt by each submodule's
``init_nonpersistent_buffers(device)`` hook, which must handle the module's *own* buffers only.

A model class can list checkpoint keys it knowingly does not use in ``ignored_checkpoint_keys`` (exact
names or ``fnmatch`` patterns); they are dropped instead of failing the load.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
DEFAULT_WEIGHTS_NAME = "diffusion_pytorch_model"
BUFFER_HOOK = "init_nonpersistent_buffers"

PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device, None]
M = TypeVar("M", bound=nn.Module)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model; the message names every offending key."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str], source: str) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        parts = [f"checkpoint {source} does not match the model:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        super().__init__("\n".join(parts))


# -- reading the folder ---------------------------------------------------------------------------------


def _require_folder(folder: PathLike) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (expected a folder with {CONFIG_NAME} and weights)")
    return path


def read_config(folder: PathLike, name: str = CONFIG_NAME) -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder."""
    path = _require_folder(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"model config {str(path)!r} not found (expected {name} in {str(folder)!r})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"model config {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model config {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _candidates(weights_name: str, variant: Optional[str]) -> list[str]:
    variants = [variant] if variant else [None, "fp16"]
    names: list[str] = []
    for fmt in ("safetensors", "bin"):
        for var in variants:
            if var is None:
                names += [f"{weights_name}.{fmt}", f"{weights_name}.{fmt}.index.json"]
            else:
                names += [f"{weights_name}.{var}.{fmt}", f"{weights_name}.{fmt}.index.{var}.json"]
    return names


def find_weights(folder: PathLike, weights_name: str = DEFAULT_WEIGHTS_NAME, variant: Optional[str] = None) -> Path:
    """The weights file (or shard index) of a model folder, by the order in the module docstring."""
    path = _require_folder(folder)
    names = _candidates(weights_name, variant)
    for name in names:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no weights in {str(path)!r} (expected one of: {', '.join(names)})")


def _load_file(path: Path, device: DeviceLike) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} not found")
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device) if device is not None else "cpu")
    state = torch.load(str(path), map_location=device if device is not None else "cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict")
    return dict(state)


def load_state_dict(path: PathLike, device: DeviceLike = None) -> dict[str, torch.Tensor]:
    """Every tensor of one weights file or of all shards named by an ``*.index*.json``."""
    path = Path(path)
    if not path.name.endswith(".json"):
        return _load_file(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"weights index {str(path)!r} not found")
    index = json.loads(path.read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"weights index {str(path)!r} has no 'weight_map'")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"weights shard {str(shard_path)!r} (listed in {path.name}) not found")
        state.update(_load_file(shard_path, device))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointMismatchError([], [], [f"{k}: in index but not in its shard" for k in missing], str(path))
    return state


# -- matching and assigning -----------------------------------------------------------------------------


def _ignored(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or fnmatch.fnmatchcase(key, p) for p in patterns)


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], ignore: Iterable[str] = (), source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """``state`` minus the ignored keys, after checking it holds exactly the model's keys and shapes.

    Raises :class:`CheckpointMismatchError` naming every missing, unexpected or wrongly shaped key.
    """
    ignore = tuple(ignore)
    expected = model.state_dict()
    kept = {k: v for k, v in state.items() if not (k not in expected and _ignored(k, ignore))}
    dropped = sorted(set(state) - set(kept))
    if dropped:
        logger.info("ignoring %d unused checkpoint key(s): %s", len(dropped), ", ".join(dropped))
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(kept[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(kept) & set(expected))
        if tuple(kept[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, source)
    return kept


def init_nonpersistent_buffers(model: nn.Module, device: DeviceLike = None) -> None:
    """Call every submodule's ``init_nonpersistent_buffers(device)`` hook, then check nothing is left
    on the meta device."""
    for module in model.modules():
        hook = getattr(module, BUFFER_HOOK, None)
        if callable(hook):
            hook(device)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(
            f"{type(model).__name__}: tensors still on the meta device after loading: {', '.join(left)} "
            f"(a module with non-persistent buffers needs an {BUFFER_HOOK}(device) method)"
        )


def load_pretrained(
    build: Callable[[dict[str, Any]], M],
    folder: PathLike,
    dtype: Optional[torch.dtype] = None,
    device: DeviceLike = None,
    *,
    variant: Optional[str] = None,
    weights_name: str = DEFAULT_WEIGHTS_NAME,
    ignore: Optional[Iterable[str]] = None,
    remap: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None,
) -> M:
    """Build a model from a folder's ``config.json`` and load its weights.

    Args:
        build: makes the (uninitialised) model from the config dict; called under the meta device.
        folder: the model folder.
        dtype: dtype of floating tensors (default: ``torch.get_default_dtype()``, as diffusers).
        device: where the model goes (default CPU).
        variant: only try this weights variant (e.g. ``"fp16"``).
        weights_name: stem of the weights files.
        ignore: checkpoint keys to drop (default: the model's ``ignored_checkpoint_keys``).
        remap: optional rename/convert step applied to the raw state dict before the key check.
    Returns:
        the model in eval mode.
    """
    from .random_init import build_random, is_random_component

    config = read_config(folder)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "meta":
        raise ValueError("load_pretrained needs a real device, not meta")
    if is_random_component(folder):  # random full-size weights drawn on the device (benchmarks)
        return build_random(lambda: build(config), folder, dtype, device)
    weights = find_weights(folder, weights_name, variant)

    with torch.device("meta"):
        model = build(config)
    if ignore is None:
        ignore = getattr(model, "ignored_checkpoint_keys", ())

    logger.info("loading %s from %s", type(model).__name__, weights)
    state = load_state_dict(weights, device="cpu")
    if remap is not None:
        state = remap(state)
    state = check_state_dict(model, state, ignore=ignore, source=str(weights))
    # Always copy: safetensors hands out views of the memory-mapped file (unaligned, and the model would
    # keep the mapping alive); on an accelerator the copy is the one host-to-device transfer.
    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    init_nonpersistent_buffers(model, device)
    return model.eval()
