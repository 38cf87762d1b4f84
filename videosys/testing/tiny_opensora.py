"""Write tiny, random-initialised Open-Sora 1.2 checkpoints in the layout :class:`OpenSoraPipeline` loads.

The official weights are three hub repositories, which a local checkpoint folder holds side by side::

    transformer/    hpcai-tech/OpenSora-STDiT-v3   config.json + model.safetensors
    vae/            hpcai-tech/OpenSora-VAE-v1.2   config.json + model.safetensors
    text_encoder/   DeepFloyd/t5-v1_1-xxl          T5 config + weights, spiece.model + tokenizer files

:func:`write_tiny_opensora` writes that folder with the same file formats and tiny sizes: the STDiT3 and
VAE writers of :mod:`videosys.testing.tiny_stdit3` / :mod:`videosys.testing.tiny_opensora_vae`, and a
tiny T5 v1.1 encoder with an offline-trained SentencePiece tokenizer saved into ``text_encoder/`` (the
DeepFloyd repository keeps its tokenizer files next to the weights). The transformer's caption width is
the T5 width and its null caption has the 300 rows the official T5 padding length needs.

Equal seeds give byte-identical weight files. The videos are noise: it is for smoke tests only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from videosys.testing.common import extra_file_targets, prepare_output_dir
from videosys.testing.tiny_latte import make_text_encoder
from videosys.testing.tiny_opensora_vae import write_tiny_opensora_vae
from videosys.testing.tiny_stdit3 import write_tiny_stdit3
from videosys.testing.tokenizer import build_t5_tokenizer

__all__ = ["COMPONENTS", "SMOKE_CHECKPOINT_KWARGS", "SMOKE_OVERLAY", "write_smoke_checkpoint", "write_t5_text_encoder",
           "write_tiny_opensora"]

logger = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("transformer", "vae", "text_encoder")
"""Component folders of an Open-Sora checkpoint folder."""

TEXT_MAX_LENGTH = 300
"""T5 padding length of Open-Sora 1.2 (and rows of the learned null caption)."""

SMOKE_OVERLAY = """\
# Overlay read by VideoSysEngine: this checkpoint is a random-initialised smoke-test model.
# The sizes are the official ones (144p-720p, 2s-16s); the default is the smallest, so a CPU run takes seconds.
description: random-initialised tiny Open-Sora 1.2 (smoke test only; its videos are noise)
sampling:
  resolution: 144p
  aspect: "9:16"
  frames: 2s
"""
"""Text of the ``videosys.yaml`` overlay shipped with ``models/opensora-smoke``."""

SMOKE_CHECKPOINT_KWARGS: dict[str, Any] = {
    "seed": 0,
    "depth": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "text_d_model": 32,
    "vae2d_block_out_channels": (8, 8, 8, 8),
    "temporal_filters": 8,
}
"""Keyword arguments of :func:`write_tiny_opensora` for the bundled ``models/opensora-smoke``."""


def write_t5_text_encoder(folder: Path, *, seed: int, d_model: int, tokenizer_seed: int = 0) -> None:
    """A tiny T5 encoder (safetensors) with its tokenizer files in the same folder."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    with tempfile.TemporaryDirectory(prefix="tiny-opensora-tokenizer-") as tmp:
        tokenizer_dir = build_t5_tokenizer(Path(tmp), seed=tokenizer_seed, model_max_length=TEXT_MAX_LENGTH)
        vocab_size = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
        encoder = make_text_encoder(seed=seed, vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model,
                                    num_heads=max(1, d_model // 16))
        progress = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers 5 shows a bar while writing shards
        try:
            encoder.save_pretrained(str(folder), safe_serialization=True)
        finally:
            if progress:
                hf_logging.enable_progress_bar()
        for item in tokenizer_dir.iterdir():
            shutil.copy2(item, folder / item.name)


def write_tiny_opensora(
    path: str | Path,
    *,
    seed: int = 0,
    depth: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    text_d_model: int = 32,
    vae2d_block_out_channels: tuple[int, ...] = (8, 8, 8, 8),
    temporal_filters: int = 8,
    tokenizer_seed: int = 0,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a random-initialised tiny Open-Sora 1.2 checkpoint folder.

    Args:
        path: output folder (created).
        seed: seed of every weight of the three components (each draws from its own stream).
        depth: spatial/temporal block pairs of the STDiT3.
        hidden_size, num_heads: STDiT3 width and heads.
        text_d_model: width of the T5 encoder, and so the STDiT3's ``caption_channels``.
        vae2d_block_out_channels: channels of the 2D VAE's four blocks (8x spatial factor).
        temporal_filters: base width of the temporal VAE.
        tokenizer_seed: seed of the tokenizer's synthetic training corpus.
        extra_files: relative file name -> text, written into the folder (``{"videosys.yaml": ...}``).
        overwrite: replace an earlier Open-Sora checkpoint at ``path``.

    Returns:
        The checkpoint folder.
    """
    root = Path(path)
    targets = extra_file_targets(root, extra_files or {})
    prepare_output_dir(root, overwrite, is_ours=lambda p: all((p / n / "config.json").is_file() for n in COMPONENTS),
                       what="an Open-Sora checkpoint (transformer/, vae/, text_encoder/ with config.json)")
    write_tiny_stdit3(root / "transformer", seed=seed, depth=depth, hidden_size=hidden_size, num_heads=num_heads,
                      caption_channels=text_d_model, model_max_length=TEXT_MAX_LENGTH)
    write_tiny_opensora_vae(root / "vae", seed=seed, vae2d_block_out_channels=vae2d_block_out_channels,
                            temporal_filters=temporal_filters)
    (root / "text_encoder").mkdir()
    write_t5_text_encoder(root / "text_encoder", seed=seed, d_model=text_d_model, tokenizer_seed=tokenizer_seed)
    for target, text in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    logger.info("wrote tiny Open-Sora checkpoint (seed %d) to %s", seed, root)
    return root


def write_smoke_checkpoint(path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the bundled smoke checkpoint (``models/opensora-smoke``) with its ``videosys.yaml`` overlay."""
    return write_tiny_opensora(path, **SMOKE_CHECKPOINT_KWARGS, extra_files={"videosys.yaml": SMOKE_OVERLAY},
                               overwrite=overwrite)
