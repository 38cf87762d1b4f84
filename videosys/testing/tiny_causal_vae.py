"""Write tiny, random-initialised Open-Sora-Plan v1.1 CausalVAE checkpoints in the layout of
``LanguageBind/Open-Sora-Plan-v1.1.0/vae``.

The real folder is a diffusers-style model folder::

    config.json                           (see OFFICIAL_CONFIG)
    diffusion_pytorch_model.safetensors   (float32)

:func:`write_tiny_causal_vae` writes the same folder with the official ``config.json`` fields and block
layout (four levels: 8x spatial and 4x temporal compression, the same state-dict keys) but a handful of
channels, so that loading, encoding and (tiled) decoding run on a CPU in well under a second. The
only extra field is ``norm_num_groups`` (the reference hard-codes 32 GroupNorm groups, more than a
tiny width has); tiling knobs can be added as further extensions. Every parameter is drawn from a
generator seeded by ``seed`` (:func:`~videosys.testing.tiny_latte.randomize_parameters`), so equal
seeds give byte-identical files. Reconstructions are noise: for tests only.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from videosys.models.opensora_plan.causal_vae import CLASS_NAME, WEIGHTS_NAME, CausalVAE
from videosys.testing.common import config_field_is, norm_groups, prepare_output_dir, randomize_parameters

__all__ = ["OFFICIAL_CONFIG", "WEIGHTS_FILE", "tiny_config", "make_causal_vae", "write_tiny_causal_vae"]

logger = logging.getLogger(__name__)

OFFICIAL_CONFIG: dict[str, Any] = {
    "_class_name": CLASS_NAME,
    "_diffusers_version": "0.27.2",
    "_name_or_path": "../results/pretrained_488_tail",
    "attn_resolutions": [],
    "decoder_attention": "AttnBlock3DFix",
    "decoder_conv_in": "CausalConv3d",
    "decoder_conv_out": "CausalConv3d",
    "decoder_mid_resnet": "ResnetBlock3D",
    "decoder_resnet_blocks": ["ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D", "ResnetBlock3D"],
    "decoder_spatial_upsample": ["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
    "decoder_temporal_upsample": ["", "", "TimeUpsampleRes2x", "TimeUpsampleRes2x"],
    "double_z": True,
    "dropout": 0.0,
    "embed_dim": 4,
    "encoder_attention": "AttnBlock3DFix",
    "encoder_conv_in": "Conv2d",
    "encoder_conv_out": "CausalConv3d",
    "encoder_mid_resnet": "ResnetBlock3D",
    "encoder_resnet_blocks": ["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"],
    "encoder_spatial_downsample": ["Downsample", "Downsample", "Downsample", ""],
    "encoder_temporal_downsample": ["", "TimeDownsampleRes2x", "TimeDownsampleRes2x", ""],
    "hidden_size": 128,
    "hidden_size_mult": [1, 2, 4, 4],
    "in_channels": 3,
    "loss_params": {"disc_start": 2001, "disc_weight": 0.5, "kl_weight": 1e-06, "logvar_init": 0.0},
    "loss_type": "opensora.models.ae.videobase.losses.LPIPSWithDiscriminator3D",
    "lr": 1e-05,
    "num_res_blocks": 2,
    "out_channels": 3,
    "q_conv": "CausalConv3d",
    "resolution": 256,
    "z_channels": 4,
}
"""The official ``vae/config.json`` of ``LanguageBind/Open-Sora-Plan-v1.1.0`` (as published in the
Open-Sora-Plan docs for the v1.1.0 VAE)."""

WEIGHTS_FILE = f"{WEIGHTS_NAME}.safetensors"

_SEED_STRIDE = 1_000_003
_SEED_OFFSET = 11  # keeps this stream apart from the other tiny checkpoints' streams


def tiny_config(
    *,
    hidden_size: int = 8,
    num_res_blocks: int = 2,
    norm_num_groups: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The ``config.json`` dict of a tiny checkpoint: :data:`OFFICIAL_CONFIG` with a small ``hidden_size``
    (widths ``hidden_size * (1, 2, 4, 4)``), ``num_res_blocks`` and the ``norm_num_groups`` extension
    (default: the largest of 32, 16, ..., 2 that divides every width with two or more channels per group).
    ``extra`` adds further fields (e.g. the tiling extensions or ``scaling_factor``).
    """
    config = copy.deepcopy(OFFICIAL_CONFIG)
    config["hidden_size"] = int(hidden_size)
    config["num_res_blocks"] = int(num_res_blocks)
    widths = [int(hidden_size) * m for m in config["hidden_size_mult"]]
    config["norm_num_groups"] = int(norm_num_groups) if norm_num_groups is not None else norm_groups(widths)
    if extra:
        config.update(copy.deepcopy(dict(extra)))
    return config


def _build(config: dict[str, Any], seed: int) -> CausalVAE:
    with torch.device("cpu"):
        model = CausalVAE.from_config(config).float()
    generator = torch.Generator(device="cpu").manual_seed(seed * _SEED_STRIDE + _SEED_OFFSET)
    randomize_parameters(model, generator)
    return model.eval()


def make_causal_vae(
    *,
    seed: int = 0,
    hidden_size: int = 8,
    num_res_blocks: int = 2,
    norm_num_groups: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> CausalVAE:
    """The random-initialised tiny :class:`CausalVAE` (float32, CPU, eval mode) that
    :func:`write_tiny_causal_vae` with the same arguments saves."""
    config = tiny_config(
        hidden_size=hidden_size, num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups, extra=extra
    )
    return _build(config, seed)


def write_tiny_causal_vae(
    folder: Union[str, Path],
    *,
    seed: int = 0,
    hidden_size: int = 8,
    num_res_blocks: int = 2,
    norm_num_groups: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
) -> Path:
    """Write a tiny checkpoint (``config.json`` + ``diffusion_pytorch_model.safetensors``) in the official layout.

    Args:
        folder: output folder (created).
        seed: seed of every weight; equal seeds (and sizes) give byte-identical files.
        hidden_size: base width (official: 128); the levels are ``hidden_size * (1, 2, 4, 4)`` wide.
        num_res_blocks: ResNet blocks per encoder level (decoder: one more; official: 2).
        norm_num_groups: GroupNorm groups (default: see :func:`tiny_config`).
        extra: further ``config.json`` fields (extensions such as the tiling knobs).
        overwrite: replace an earlier CausalVAE checkpoint in ``folder``; a non-empty folder without a
            CausalVAE ``config.json`` is always refused.

    Returns:
        the folder.
    """
    from safetensors.torch import save_file

    root = Path(folder)
    config = tiny_config(
        hidden_size=hidden_size, num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups, extra=extra
    )
    model = _build(config, seed)
    prepare_output_dir(root, overwrite, is_ours=lambda p: config_field_is(p / "config.json", "_class_name", CLASS_NAME),
                       what=f"a {CLASS_NAME} checkpoint")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info(
        "wrote tiny CausalVAE (seed %d, %d parameters) to %s", seed, sum(p.numel() for p in model.parameters()), root
    )
    return root
