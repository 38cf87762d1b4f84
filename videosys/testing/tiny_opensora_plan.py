"""Write tiny, random-initialised Open-Sora-Plan v1.1 checkpoints in the layout :class:`OpenSoraPlanPipeline`
loads: the folders of ``LanguageBind/Open-Sora-Plan-v1.1.0`` plus the T5 of ``DeepFloyd/t5-v1_1-xxl``::

    65x512x512/     config.json (LatteT2V) + diffusion_pytorch_model.safetensors   (17 latent frames)
    221x512x512/    the same for 221 frames                                       (56 latent frames)
    vae/            CausalVAE 4x8x8 (see videosys.testing.tiny_causal_vae)
    text_encoder/   T5 v1.1 encoder, with spiece.model and the tokenizer files next to it

The tiny transformers are named by the size they are written for (``65x128x128`` for ``sample_size`` 16)
and carry the unused ``caption_projection.y_embedding`` buffer the official files have. Equal seeds give
byte-identical weight files. The videos are noise: it is for smoke tests only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from videosys.models.opensora_plan.transformer import OpenSoraPlanConfig, OpenSoraPlanTransformer3D
from videosys.testing.tiny_causal_vae import write_tiny_causal_vae
from videosys.testing.common import extra_file_targets, prepare_output_dir, randomize_parameters
from videosys.testing.tiny_opensora import write_t5_text_encoder

__all__ = ["OFFICIAL_TRANSFORMER_CONFIG", "SMOKE_CHECKPOINT_KWARGS", "SMOKE_OVERLAY", "make_transformer",
           "write_smoke_checkpoint", "write_tiny_opensora_plan", "write_tiny_transformer"]

logger = logging.getLogger(__name__)

OFFICIAL_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "LatteT2V",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_mode": "xformers",
    "attention_type": "default",
    "caption_channels": 4096,
    "compress_kv_factor": 1,
    "cross_attention_dim": 1152,
    "double_self_attention": False,
    "dropout": 0.0,
    "in_channels": 4,
    "model_max_length": 300,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "out_channels": 8,
    "patch_size": 2,
    "patch_size_t": 1,
    "sample_size": [64, 64],
    "upcast_attention": False,
    "use_linear_projection": False,
    "use_rope": False,
    "video_length": 17,
}
"""The fields of the official ``65x512x512/config.json`` (``221x512x512`` has ``video_length`` 56)."""

CAPTION_BUFFER_ROWS = 120  # rows of the training-time ``caption_projection.y_embedding`` buffer
_SEED_STRIDE = 1_000_003
_SEED_OFFSET = 13  # keeps the transformers' streams apart from the other tiny checkpoints'

SMOKE_OVERLAY = """\
# Overlay read by VideoSysEngine: this checkpoint is a random-initialised smoke-test model.
description: random-initialised tiny Open-Sora-Plan v1.1 (smoke test only; its videos are noise)
sampling:
  height: 128
  width: 128
allowed:
  frames: [65, 221]
  sizes: [[128, 128]]
"""
"""Text of the ``videosys.yaml`` overlay shipped with ``models/opensora-plan-smoke``."""

SMOKE_CHECKPOINT_KWARGS: dict[str, Any] = {"seed": 0, "frames": (65, 221), "sample_size": 16, "num_layers": 2,
                                           "heads": 4, "head_dim": 16, "text_d_model": 32}
"""Keyword arguments of :func:`write_tiny_opensora_plan` for the bundled ``models/opensora-plan-smoke``."""


def latent_frames(frames: int) -> int:
    """Latent frames of the 4x temporal CausalVAE (the first frame is kept apart)."""
    return (frames - 1) // 4 + 1


def tiny_transformer_config(*, video_length: int, sample_size: int = 16, num_layers: int = 2, heads: int = 4,
                            head_dim: int = 16, caption_channels: int = 32) -> dict[str, Any]:
    """The official config with tiny sizes (``config.json`` content)."""
    return {**OFFICIAL_TRANSFORMER_CONFIG, "num_layers": num_layers, "num_attention_heads": heads,
            "attention_head_dim": head_dim, "cross_attention_dim": heads * head_dim,
            "caption_channels": caption_channels, "sample_size": [sample_size, sample_size],
            "video_length": video_length}


@torch.no_grad()
def make_transformer(config: Mapping[str, Any], seed: int) -> OpenSoraPlanTransformer3D:
    """The tiny transformer of ``config`` with every parameter drawn from ``seed``'s stream (float32, eval)."""
    with torch.device("meta"):
        model = OpenSoraPlanTransformer3D(OpenSoraPlanConfig.from_json_dict(config))
    model = model.to_empty(device="cpu")
    model.init_nonpersistent_buffers("cpu")
    randomize_parameters(model, torch.Generator().manual_seed(seed * _SEED_STRIDE + _SEED_OFFSET + config["video_length"]))
    return model.eval()


def write_tiny_transformer(folder: Path, config: Mapping[str, Any], seed: int) -> Path:
    """``config.json`` + ``diffusion_pytorch_model.safetensors`` (with the unused caption buffer) in ``folder``."""
    from safetensors.torch import save_file

    model = make_transformer(config, seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    channels = int(config["caption_channels"])
    state["caption_projection.y_embedding"] = torch.randn(CAPTION_BUFFER_ROWS, channels, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def write_tiny_opensora_plan(
    path: str | Path,
    *,
    seed: int = 0,
    frames: Sequence[int] = (65,),
    sample_size: int = 16,
    num_layers: int = 2,
    heads: int = 4,
    head_dim: int = 16,
    text_d_model: int = 32,
    vae_kwargs: Mapping[str, Any] | None = None,
    tokenizer_seed: int = 0,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a random-initialised tiny Open-Sora-Plan v1.1 checkpoint folder.

    Args:
        path: output folder (created).
        seed: seed of every weight (each component draws from its own stream).
        frames: video lengths to write a transformer for (each ``(n - 1) % 4 == 0``); folders
            ``<n>x<8*sample_size>x<8*sample_size>``.
        sample_size: latent height and width of the transformers.
        num_layers, heads, head_dim: transformer sizes.
        text_d_model: width of the T5 encoder (the transformers' ``caption_channels``).
        vae_kwargs: keyword arguments of :func:`write_tiny_causal_vae` (sizes of the VAE).
        tokenizer_seed: seed of the tokenizer's synthetic training corpus.
        extra_files: relative file name -> text, written into the folder (``{"videosys.yaml": ...}``).
        overwrite: replace an earlier Open-Sora-Plan checkpoint at ``path``.

    Returns:
        The checkpoint folder.
    """
    root = Path(path)
    bad = [n for n in frames if n < 1 or (n - 1) % 4]
    if bad:
        raise ValueError(f"frames {bad} not allowed: the CausalVAE needs (frames - 1) % 4 == 0 (e.g. 65, 221)")
    targets = extra_file_targets(root, extra_files or {})
    prepare_output_dir(root, overwrite,
                       is_ours=lambda p: all((p / n / "config.json").is_file() for n in ("vae", "text_encoder")),
                       what="an Open-Sora-Plan checkpoint (vae/, text_encoder/ with config.json)")
    pixels = 8 * sample_size
    for n in frames:
        config = tiny_transformer_config(video_length=latent_frames(n), sample_size=sample_size, num_layers=num_layers,
                                         heads=heads, head_dim=head_dim, caption_channels=text_d_model)
        write_tiny_transformer(root / f"{n}x{pixels}x{pixels}", config, seed)
    write_tiny_causal_vae(root / "vae", seed=seed, **dict(vae_kwargs or {}))
    (root / "text_encoder").mkdir()
    write_t5_text_encoder(root / "text_encoder", seed=seed, d_model=text_d_model, tokenizer_seed=tokenizer_seed)
    for target, text in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    logger.info("wrote tiny Open-Sora-Plan checkpoint (seed %d, frames %s) to %s", seed, list(frames), root)
    return root


def write_smoke_checkpoint(path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the bundled smoke checkpoint (``models/opensora-plan-smoke``) with its ``videosys.yaml`` overlay."""
    return write_tiny_opensora_plan(path, **SMOKE_CHECKPOINT_KWARGS, extra_files={"videosys.yaml": SMOKE_OVERLAY},
                                    overwrite=overwrite)
