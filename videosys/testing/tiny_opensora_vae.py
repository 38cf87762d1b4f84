"""Write tiny, random-initialised Open-Sora v1.2 VAE checkpoints in the layout of ``hpcai-tech/OpenSora-VAE-v1.2``.

The real checkpoint is a transformers-style folder::

    config.json          (see OFFICIAL_CONFIG)
    model.safetensors    spatial_vae.module.*, temporal_vae.*, scale, shift   (float32)

:func:`write_tiny_opensora_vae` writes the same folder with a handful of channels, so that loading,
encoding and decoding run on a CPU in seconds.  The official ``config.json`` has no architecture for the
2D VAE (the reference code downloads it) and none for the temporal VAE (fixed in code), so the tiny
``config.json`` carries two extensions that :mod:`videosys.models.opensora.vae` reads:

* ``vae_2d.config``: ``AutoencoderKL`` constructor arguments (merged over the SDXL VAE's);
* ``vae_temporal.filters``, ``vae_temporal.num_res_blocks``, ``vae_temporal.num_groups``.

All other fields are the official ones.  Every parameter is drawn from a generator seeded by ``seed``
(:func:`~videosys.testing.tiny_latte.randomize_parameters`), so equal seeds give byte-identical files.
The normalisation buffers ``shift`` / ``scale`` keep the config values.  Reconstructions are noise:
for tests only.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch

from videosys.models.opensora.vae import DEFAULT_SCALE, DEFAULT_SHIFT, MODEL_TYPE, OpenSoraVAE
from videosys.testing.common import config_field_is, norm_groups, prepare_output_dir, randomize_parameters

__all__ = ["OFFICIAL_CONFIG", "tiny_config", "make_opensora_vae", "write_tiny_opensora_vae"]

logger = logging.getLogger(__name__)

OFFICIAL_CONFIG: dict[str, Any] = {
    "architectures": [MODEL_TYPE],
    "cal_loss": False,
    "freeze_vae_2d": False,
    "from_pretrained": None,
    "micro_frame_size": 17,
    "model_type": MODEL_TYPE,
    "scale": list(DEFAULT_SCALE),
    "shift": list(DEFAULT_SHIFT),
    "torch_dtype": "float32",
    "vae_2d": {
        "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
        "local_files_only": False,
        "micro_batch_size": 4,
        "subfolder": "vae",
        "type": "VideoAutoencoderKL",
    },
    "vae_temporal": {"from_pretrained": None, "type": "VAE_Temporal_SD"},
}
"""The fields of the official ``config.json`` (``transformers_version`` left out)."""

_SEED_STRIDE = 1_000_003
_SEED_OFFSET = 7  # keeps this stream apart from the tiny Latte components' streams
WEIGHTS_FILE = "model.safetensors"


def tiny_config(
    *,
    vae2d_block_out_channels: Sequence[int] = (8, 8, 8, 8),
    vae2d_layers_per_block: int = 1,
    temporal_filters: int = 8,
    temporal_num_res_blocks: int = 2,
    temporal_num_groups: int = 4,
    micro_frame_size: int = 17,
    micro_batch_size: int = 4,
) -> dict[str, Any]:
    """The ``config.json`` dict of a tiny checkpoint: :data:`OFFICIAL_CONFIG` plus the size extensions.

    ``vae2d_block_out_channels`` has one entry per 2D down block; four give the real 8x spatial factor.
    ``temporal_num_groups`` must divide ``temporal_filters`` times 1, 2 and 4.
    """
    channels = [int(c) for c in vae2d_block_out_channels]
    if not channels:
        raise ValueError("vae2d_block_out_channels must not be empty")
    widths = [temporal_filters * m for m in (1, 2, 4)]
    if any(w % temporal_num_groups for w in widths):
        raise ValueError(f"temporal_num_groups {temporal_num_groups} must divide the temporal widths {widths}")
    config = copy.deepcopy(OFFICIAL_CONFIG)
    config["micro_frame_size"] = int(micro_frame_size)
    config["vae_2d"]["micro_batch_size"] = int(micro_batch_size)
    config["vae_2d"]["config"] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": int(vae2d_layers_per_block),
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": norm_groups(channels),
        "sample_size": 64,
        "scaling_factor": 0.13025,
        "force_upcast": False,
    }
    config["vae_temporal"].update(
        filters=int(temporal_filters), num_res_blocks=int(temporal_num_res_blocks), num_groups=int(temporal_num_groups)
    )
    return config


def make_opensora_vae(
    *,
    seed: int = 0,
    vae2d_block_out_channels: Sequence[int] = (8, 8, 8, 8),
    vae2d_layers_per_block: int = 1,
    temporal_filters: int = 8,
    temporal_num_res_blocks: int = 2,
    temporal_num_groups: int = 4,
    micro_frame_size: int = 17,
    micro_batch_size: int = 4,
) -> OpenSoraVAE:
    """The random-initialised tiny :class:`OpenSoraVAE` (float32, CPU, eval mode) that
    :func:`write_tiny_opensora_vae` with the same arguments saves."""
    config = tiny_config(
        vae2d_block_out_channels=vae2d_block_out_channels,
        vae2d_layers_per_block=vae2d_layers_per_block,
        temporal_filters=temporal_filters,
        temporal_num_res_blocks=temporal_num_res_blocks,
        temporal_num_groups=temporal_num_groups,
        micro_frame_size=micro_frame_size,
        micro_batch_size=micro_batch_size,
    )
    return _build(config, seed)


def _build(config: dict[str, Any], seed: int) -> OpenSoraVAE:
    with torch.device("cpu"):
        model = OpenSoraVAE.from_config(config).float()
    generator = torch.Generator(device="cpu").manual_seed(seed * _SEED_STRIDE + _SEED_OFFSET)
    randomize_parameters(model, generator)
    return model.eval()


def write_tiny_opensora_vae(
    folder: Union[str, Path],
    *,
    seed: int = 0,
    vae2d_block_out_channels: Sequence[int] = (8, 8, 8, 8),
    vae2d_layers_per_block: int = 1,
    temporal_filters: int = 8,
    temporal_num_res_blocks: int = 2,
    temporal_num_groups: int = 4,
    micro_frame_size: int = 17,
    micro_batch_size: int = 4,
    overwrite: bool = True,
) -> Path:
    """Write a tiny checkpoint (``config.json`` + ``model.safetensors``) in the official layout.

    Args:
        folder: output folder (created).
        seed: seed of every weight; equal seeds give byte-identical files.
        vae2d_block_out_channels: channels of the 2D VAE blocks (4 blocks: 8x spatial compression).
        vae2d_layers_per_block: ResNet layers per 2D VAE encoder block (the SDXL VAE: 2).
        temporal_filters: base width of the temporal VAE (official: 128).
        temporal_num_res_blocks: ResBlocks per temporal level (official: 4).
        temporal_num_groups: GroupNorm groups of the temporal VAE (official: 32).
        micro_frame_size: frames per temporal clip (official: 17).
        micro_batch_size: images per 2D VAE call (official: 4).
        overwrite: replace an earlier Open-Sora VAE checkpoint in ``folder``.

    Returns:
        the folder.
    """
    from safetensors.torch import save_file

    root = Path(folder)
    config = tiny_config(
        vae2d_block_out_channels=vae2d_block_out_channels,
        vae2d_layers_per_block=vae2d_layers_per_block,
        temporal_filters=temporal_filters,
        temporal_num_res_blocks=temporal_num_res_blocks,
        temporal_num_groups=temporal_num_groups,
        micro_frame_size=micro_frame_size,
        micro_batch_size=micro_batch_size,
    )
    model = _build(config, seed)
    prepare_output_dir(root, overwrite, is_ours=lambda p: config_field_is(p / "config.json", "model_type", MODEL_TYPE),
                       what=f"a {MODEL_TYPE} checkpoint")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info(
        "wrote tiny Open-Sora VAE (seed %d, %d parameters) to %s",
        seed,
        sum(p.numel() for p in model.parameters()),
        root,
    )
    return root
