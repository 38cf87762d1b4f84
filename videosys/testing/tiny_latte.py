"""Write tiny, random-initialised Latte checkpoints in the layout of ``maxin-cn/Latte-1``.

The real Latte-1 checkpoint is a diffusers pipeline folder::

    model_index.json
    scheduler/scheduler_config.json
    text_encoder/config.json, model.safetensors            (T5 v1.1 XXL encoder)
    tokenizer/spiece.model, tokenizer_config.json, ...     (T5 tokenizer)
    transformer/config.json, diffusion_pytorch_model.safetensors
    vae/config.json, diffusion_pytorch_model.safetensors    (SD VAE, 8x downsampling)

:func:`write_tiny_latte` writes the same folder with the same component classes
and config shapes, but with a handful of channels, so that the loading and
sampling code of the engine can be exercised on a CPU in seconds and without any
download.  Every parameter is re-drawn from a seeded generator (diffusers
zero-initialises several output projections, which would make the transformer
blind to its inputs), so the same ``seed`` always gives byte-identical weight
files and the outputs depend on the prompt, the timestep and the latents.

The videos such a checkpoint produces are noise: it is for smoke tests only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, LatteTransformer3DModel
    from transformers import T5EncoderModel

from videosys.testing.common import extra_file_targets, norm_groups, prepare_output_dir, randomize_parameters
from videosys.testing.tokenizer import build_t5_tokenizer

__all__ = [
    "SMOKE_OVERLAY",
    "SMOKE_CHECKPOINT_KWARGS",
    "COMPONENTS",
    "smoke_overlay",
    "make_transformer",
    "make_vae",
    "make_text_encoder",
    "make_scheduler",
    "randomize_parameters",
    "write_tiny_latte",
    "write_smoke_checkpoint",
]

logger = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
"""Component folders of a Latte pipeline checkpoint (the keys of ``model_index.json``)."""

SMOKE_OVERLAY = """\
# Overlay read by VideoSysEngine: this checkpoint is a random-initialised smoke-test model.
description: random-initialised tiny Latte (smoke test only; its videos are noise)
sampling:
  frames: 16
  height: 128
  width: 128
allowed:
  frames: [1, 16]
  sizes: [[128, 128], [256, 256]]
"""
"""Text of the ``videosys.yaml`` overlay shipped with the bundled smoke checkpoint."""

SMOKE_CHECKPOINT_KWARGS: dict[str, Any] = {
    "seed": 0,
    "num_layers": 2,
    "heads": 4,
    "head_dim": 16,
    "video_length": 16,
    "sample_size": 16,
    "caption_channels": 64,
    "text_max_length": 120,
    "vae_block_out_channels": (16, 32, 32, 32),
    "vae_latent_channels": 4,
}
"""Keyword arguments of :func:`write_tiny_latte` for the bundled ``models/latte-smoke``."""

# Offsets that give every component its own random stream, so that changing one
# component's shape does not change the weights of the others.
_SEED_STRIDE = 1_000_003
_SEED_OFFSETS = {"transformer": 1, "vae": 2, "text_encoder": 3}


def smoke_overlay() -> str:
    """Return the ``videosys.yaml`` overlay text of the bundled smoke checkpoint."""
    return SMOKE_OVERLAY


def _component_generator(seed: int, component: str) -> torch.Generator:
    """Return a CPU generator seeded for ``component`` of a checkpoint with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(seed * _SEED_STRIDE + _SEED_OFFSETS[component])


def make_transformer(
    *,
    seed: int = 0,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 8,
    video_length: int = 16,
    sample_size: int = 16,
    caption_channels: int = 32,
    latent_channels: int = 4,
) -> LatteTransformer3DModel:
    """Build a tiny ``LatteTransformer3DModel`` with Latte-1's configuration shape.

    Only the sizes differ from Latte-1 (28 layers, 16 heads x 72, caption 4096,
    sample 64): activation ``gelu-approximate``, attention biases, AdaLN-single
    norms without elementwise affine, eps 1e-6, 1000 AdaLN embeddings, patch
    size 2, and twice as many output channels as input channels (learned sigma).

    Args:
        seed: Checkpoint seed; the weights come from the transformer's own stream.
        num_layers: Number of spatial (and of temporal) transformer blocks.
        heads: Number of attention heads.
        head_dim: Size of each attention head; the hidden size is ``heads * head_dim``.
        video_length: Number of latent frames the temporal embedding is built for.
        sample_size: Latent height and width.
        caption_channels: Width of the text encoder's hidden states.
        latent_channels: VAE latent channels (input channels of the transformer).

    Returns:
        The randomised model, in float32 and eval mode.
    """
    from diffusers import LatteTransformer3DModel

    model = LatteTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=latent_channels,
        out_channels=2 * latent_channels,
        num_layers=num_layers,
        dropout=0.0,
        cross_attention_dim=heads * head_dim,
        attention_bias=True,
        sample_size=sample_size,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=caption_channels,
        video_length=video_length,
    )
    randomize_parameters(model, _component_generator(seed, "transformer"))
    return model.eval()


def make_vae(
    *,
    seed: int = 0,
    block_out_channels: Sequence[int] = (8, 8, 8, 8),
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    sample_size: int = 128,
    layers_per_block: int = 2,
) -> AutoencoderKL:
    """Build a tiny ``AutoencoderKL`` shaped like Latte-1's SD VAE.

    Four ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks give the same
    spatial factor of 8 as the real VAE (``[128, 256, 512, 512]`` channels).

    Args:
        seed: Checkpoint seed; the weights come from the VAE's own stream.
        block_out_channels: Channels of the four blocks.
        latent_channels: Channels of the latent space.
        scaling_factor: Latent scaling factor stored in the config.
        sample_size: Pixel sample size stored in the config.
        layers_per_block: ResNet layers per encoder block (Latte-1: 2).

    Returns:
        The randomised model, in float32 and eval mode.
    """
    from diffusers import AutoencoderKL

    channels = tuple(int(c) for c in block_out_channels)
    if len(channels) != 4:
        raise ValueError(f"the VAE needs 4 blocks (spatial factor 8), got block_out_channels={channels}")
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        act_fn="silu",
        latent_channels=latent_channels,
        norm_num_groups=norm_groups(channels),
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )
    randomize_parameters(model, _component_generator(seed, "vae"))
    return model.eval()


def make_text_encoder(
    *,
    seed: int = 0,
    vocab_size: int,
    d_model: int = 32,
    d_kv: int = 8,
    d_ff: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
) -> T5EncoderModel:
    """Build a tiny T5 v1.1 style ``T5EncoderModel`` (gated GELU, untied head).

    Args:
        seed: Checkpoint seed; the weights come from the text encoder's own stream.
        vocab_size: Size of the embedding table (the tokenizer's ``len``).
        d_model: Hidden size; Latte uses it as ``caption_channels``.
        d_kv: Size of each attention head.
        d_ff: Inner size of the feed-forward layers.
        num_layers: Number of encoder blocks.
        num_heads: Number of attention heads.

    Returns:
        The randomised model, in float32 and eval mode.
    """
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config)
    randomize_parameters(model, _component_generator(seed, "text_encoder"))
    return model.eval()


def make_scheduler() -> DDIMScheduler:
    """Build the ``DDIMScheduler`` with the sampling settings of Latte-1's ``scheduler/``.

    No ``variance_type`` is stored.  ``DDIMScheduler`` would keep the key
    (diffusers silently keeps config keys of compatible schedulers), but
    ``diffusers.LattePipeline`` reads ``variance_type in ("learned",
    "learned_range")`` as "the scheduler consumes the learned-sigma half of the
    transformer output" and then hands DDIM all 8 channels, which fails; without
    the key the pipeline keeps only the epsilon half, as it must for DDIM.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def write_tiny_latte(
    path: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 8,
    video_length: int = 16,
    sample_size: int = 16,
    caption_channels: int = 32,
    text_max_length: int = 120,
    vae_block_out_channels: Sequence[int] = (8, 8, 8, 8),
    vae_latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    extra_files: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
    vae_layers_per_block: int = 2,
    tokenizer_seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a random-initialised tiny Latte checkpoint in the diffusers layout of Latte-1.

    The folder is written by ``diffusers.LattePipeline.save_pretrained`` (so
    ``model_index.json`` and the component folders are exactly what diffusers
    writes), with safetensors weights; the tokenizer folder additionally holds
    ``spiece.model`` and ``special_tokens_map.json`` like the hub checkpoint.

    Args:
        path: Output folder (created).
        seed: Seed of all weights; the same seed gives byte-identical weight files.
        num_layers: Spatial/temporal block pairs of the transformer.
        heads: Attention heads of the transformer.
        head_dim: Size of each transformer attention head.
        video_length: Frames of the transformer's temporal embedding.
        sample_size: Latent height/width of the transformer (pixels = 8x).
        caption_channels: Hidden size of the T5 encoder (the transformer's caption input).
        text_max_length: ``model_max_length`` of the tokenizer.
        vae_block_out_channels: Channels of the VAE's four blocks.
        vae_latent_channels: Latent channels of the VAE (and transformer input).
        scaling_factor: The VAE's latent scaling factor.
        extra_files: Relative file name -> text, written into the checkpoint root
            (e.g. ``{"videosys.yaml": SMOKE_OVERLAY}``).
        dtype: Dtype of the saved transformer, VAE and text encoder weights.
        vae_layers_per_block: ResNet layers per VAE encoder block (Latte-1: 2).
        tokenizer_seed: Seed of the tokenizer's training corpus; kept apart from
            ``seed`` so checkpoints with different weights share one vocabulary.
        overwrite: Replace an existing checkpoint folder at ``path``.

    Returns:
        The checkpoint folder as a :class:`~pathlib.Path`.
    """
    from transformers import T5Tokenizer

    root = Path(path)
    extra_targets = extra_file_targets(root, extra_files or {})
    prepare_output_dir(root, overwrite, is_ours=lambda p: (p / "model_index.json").is_file(),
                       what="a diffusers pipeline folder (model_index.json)")

    with tempfile.TemporaryDirectory(prefix="tiny-latte-tokenizer-") as tmp:
        tokenizer_dir = build_t5_tokenizer(Path(tmp), seed=tokenizer_seed, model_max_length=text_max_length)
        tokenizer = T5Tokenizer.from_pretrained(str(tokenizer_dir))
        _write_pipeline(
            root,
            tokenizer=tokenizer,
            seed=seed,
            num_layers=num_layers,
            heads=heads,
            head_dim=head_dim,
            video_length=video_length,
            sample_size=sample_size,
            caption_channels=caption_channels,
            vae_block_out_channels=vae_block_out_channels,
            vae_latent_channels=vae_latent_channels,
            scaling_factor=scaling_factor,
            dtype=dtype,
            vae_layers_per_block=vae_layers_per_block,
        )
        # The pipeline re-saves the tokenizer from memory, which drops
        # spiece.model / special_tokens_map.json and adds loader kwargs to
        # tokenizer_config.json: put the folder that was built back instead.
        shutil.rmtree(root / "tokenizer")
        shutil.copytree(tokenizer_dir, root / "tokenizer")

    for target, text in extra_targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        raise RuntimeError(f"model_index.json written by diffusers lacks components {missing}")
    logger.info("wrote tiny Latte checkpoint (seed %d) to %s", seed, root)
    return root


def _write_pipeline(
    root: Path,
    *,
    tokenizer: Any,
    seed: int,
    num_layers: int,
    heads: int,
    head_dim: int,
    video_length: int,
    sample_size: int,
    caption_channels: int,
    vae_block_out_channels: Sequence[int],
    vae_latent_channels: int,
    scaling_factor: float,
    dtype: torch.dtype,
    vae_layers_per_block: int,
) -> None:
    """Build the tiny components and save them with ``LattePipeline.save_pretrained``."""
    from diffusers import LattePipeline
    from transformers.utils import logging as hf_logging

    transformer = make_transformer(
        seed=seed,
        num_layers=num_layers,
        heads=heads,
        head_dim=head_dim,
        video_length=video_length,
        sample_size=sample_size,
        caption_channels=caption_channels,
        latent_channels=vae_latent_channels,
    )
    vae = make_vae(
        seed=seed,
        block_out_channels=vae_block_out_channels,
        latent_channels=vae_latent_channels,
        scaling_factor=scaling_factor,
        sample_size=sample_size * 8,
        layers_per_block=vae_layers_per_block,
    )
    text_encoder = make_text_encoder(seed=seed, vocab_size=len(tokenizer), d_model=caption_channels)
    if dtype != torch.float32:
        for module in (transformer, vae, text_encoder):
            # torch's own Module.to: diffusers' override warns about
            # fp32-pinned modules, which these models do not have.
            torch.nn.Module.to(module, dtype)
    logger.debug(
        "tiny Latte parameters: transformer %d, vae %d, text encoder %d",
        sum(p.numel() for p in transformer.parameters()),
        sum(p.numel() for p in vae.parameters()),
        sum(p.numel() for p in text_encoder.parameters()),
    )

    pipeline = LattePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=make_scheduler(),
    )
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers 5 shows a bar while writing shards
    try:
        pipeline.save_pretrained(str(root), safe_serialization=True)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()


def write_smoke_checkpoint(path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the bundled smoke-test checkpoint (``models/latte-smoke``) to ``path``.

    Uses :data:`SMOKE_CHECKPOINT_KWARGS` and adds the ``videosys.yaml`` overlay
    (:data:`SMOKE_OVERLAY`).

    Args:
        path: Output folder.
        overwrite: Replace an existing checkpoint at ``path``.

    Returns:
        The checkpoint folder.
    """
    return write_tiny_latte(
        path,
        **SMOKE_CHECKPOINT_KWARGS,
        extra_files={"videosys.yaml": smoke_overlay()},
        overwrite=overwrite,
    )
