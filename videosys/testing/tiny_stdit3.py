"""Write tiny, random-initialised STDiT3 checkpoints in the layout of ``hpcai-tech/OpenSora-STDiT-v3``.

The real checkpoint is a transformers ``PreTrainedModel`` folder::

    config.json          (model_type "STDiT3", the STDiT3Config fields + transformers bookkeeping)
    model.safetensors    (fp32)

:func:`write_tiny_stdit3` writes the same two files with a handful of channels. Every parameter and the
null-caption buffer ``y_embedder.y_embedding`` are drawn from a generator seeded with ``seed`` (the
official init zero-initialises several projections, which would make the model blind to its inputs),
so equal seeds give byte-identical files. ``rope.freqs`` keeps its exact formula values (it is a
parameter only for checkpoint compatibility). :func:`make_stdit3` builds the same model in memory.

The outputs of such a model are noise: it is for tests only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from videosys.models.opensora.stdit3 import MODEL_TYPE, WEIGHTS_NAME, STDiT3, STDiT3Config
from videosys.testing.common import config_field_is, prepare_output_dir, randomize_parameters

__all__ = ["make_stdit3", "tiny_stdit3_config", "write_tiny_stdit3"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = f"{WEIGHTS_NAME}.safetensors"


def tiny_stdit3_config(
    *,
    depth: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    caption_channels: int = 32,
    model_max_length: int = 16,
    in_channels: int = 4,
    patch_size: Sequence[int] = (1, 2, 2),
    pred_sigma: bool = True,
    qk_norm: bool = True,
) -> STDiT3Config:
    """The config of a tiny model (validated: ``hidden_size`` a multiple of 4 and of ``num_heads`` with an
    even head size)."""
    return STDiT3Config(
        in_channels=in_channels,
        patch_size=tuple(patch_size),  # type: ignore[arg-type]
        hidden_size=hidden_size,
        depth=depth,
        num_heads=num_heads,
        caption_channels=caption_channels,
        model_max_length=model_max_length,
        pred_sigma=pred_sigma,
        qk_norm=qk_norm,
    )


@torch.no_grad()
def _randomized(config: STDiT3Config, seed: int, round_timestep: bool) -> STDiT3:
    """Build on meta, materialise on CPU, draw every tensor from a ``seed``-ed generator."""
    with torch.device("meta"):
        model = STDiT3(config, round_timestep=round_timestep)
    model = model.to_empty(device="cpu")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    randomize_parameters(model, generator)
    table = model.y_embedder.y_embedding
    table.copy_(torch.randn(tuple(table.shape), generator=generator) / config.caption_channels**0.5)
    exact = 1.0 / 10000.0 ** (torch.arange(0, config.head_dim, 2)[: config.head_dim // 2].float() / config.head_dim)
    model.rope.freqs.copy_(exact)
    return model.eval()


def make_stdit3(
    *,
    seed: int = 0,
    depth: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    caption_channels: int = 32,
    model_max_length: int = 16,
    in_channels: int = 4,
    patch_size: Sequence[int] = (1, 2, 2),
    pred_sigma: bool = True,
    qk_norm: bool = True,
    round_timestep: bool = True,
) -> STDiT3:
    """The tiny model :func:`write_tiny_stdit3` writes for the same arguments, in memory (fp32, CPU, eval)."""
    config = tiny_stdit3_config(
        depth=depth,
        hidden_size=hidden_size,
        num_heads=num_heads,
        caption_channels=caption_channels,
        model_max_length=model_max_length,
        in_channels=in_channels,
        patch_size=patch_size,
        pred_sigma=pred_sigma,
        qk_norm=qk_norm,
    )
    return _randomized(config, seed, round_timestep)


def _config_json(config: STDiT3Config) -> dict[str, Any]:
    data = config.to_json_dict()
    data.update({"architectures": [MODEL_TYPE], "model_type": MODEL_TYPE, "torch_dtype": "float32"})
    return data


def write_tiny_stdit3(
    folder: str | Path,
    *,
    seed: int = 0,
    depth: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    caption_channels: int = 32,
    model_max_length: int = 16,
    in_channels: int = 4,
    patch_size: Sequence[int] = (1, 2, 2),
    pred_sigma: bool = True,
    qk_norm: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write ``config.json`` + fp32 ``model.safetensors`` of a tiny random STDiT3 to ``folder``.

    Args:
        folder: output folder (created).
        seed: seed of every tensor; equal seeds (and sizes) give byte-identical files.
        depth, hidden_size, num_heads, caption_channels, model_max_length, in_channels, patch_size,
            pred_sigma, qk_norm: config fields (``hidden_size`` a multiple of 4 and of ``num_heads``, with
            an even ``hidden_size // num_heads``).
        overwrite: replace an earlier checkpoint at ``folder`` (a non-empty folder without
            ``config.json`` is never removed).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    model = make_stdit3(
        seed=seed,
        depth=depth,
        hidden_size=hidden_size,
        num_heads=num_heads,
        caption_channels=caption_channels,
        model_max_length=model_max_length,
        in_channels=in_channels,
        patch_size=patch_size,
        pred_sigma=pred_sigma,
        qk_norm=qk_norm,
    )
    root = Path(folder)
    prepare_output_dir(root, overwrite, is_ours=lambda p: config_field_is(p / CONFIG_FILE, "model_type", MODEL_TYPE),
                       what=f"an {MODEL_TYPE} checkpoint")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE), metadata={"format": "pt"})
    text = json.dumps(_config_json(model.config), indent=2, sort_keys=True) + "\n"
    (root / CONFIG_FILE).write_text(text, encoding="utf-8")
    logger.info(
        "wrote tiny STDiT3 (seed %d, depth %d, hidden %d, %d tensors) to %s", seed, depth, hidden_size, len(state), root
    )
    return root
