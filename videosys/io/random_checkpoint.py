"""Checkpoints with random full-size weights: the official on-disk layout and ``config.json`` of every
component, a :data:`~videosys.models.random_init.RANDOM_MARKER` instead of weight files (a few kB on disk).

``weights="random"`` (CLI ``--weights random``) uses one: the pipeline loads it through the same code as
the official checkpoint, and each component is built at its official size and filled on the target device.
Benchmarks and pool runs get real shapes and costs without a download; the videos are noise.

The tokenizer and scheduler files come from the model's bundled smoke checkpoint (a small offline T5
vocabulary: ids stay below the full T5 vocabulary, so the encoder costs what the real one costs).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..config import project_root
from ..models.random_init import RANDOM_MARKER

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

#: DeepFloyd/t5-v1_1-xxl (the text encoder of all three models)
T5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 64,
          "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
          "tie_word_embeddings": False}
#: maxin-cn/Latte-1 transformer/config.json (sizes)
LATTE_1 = {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28, "cross_attention_dim": 1152,
           "caption_channels": 4096, "sample_size": 64, "in_channels": 4, "out_channels": 8, "patch_size": 2,
           "video_length": 16}
#: the SD VAE (ft-EMA) Latte-1 ships in vae/
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
          "latent_channels": 4, "sample_size": 256, "scaling_factor": 0.18215}
#: hpcai-tech/OpenSora-STDiT-v3 config.json (sizes)
STDIT3_V3 = {"depth": 28, "hidden_size": 1152, "num_heads": 16, "caption_channels": 4096, "model_max_length": 300,
             "in_channels": 4, "patch_size": [1, 2, 2], "pred_sigma": True, "qk_norm": True, "mlp_ratio": 4.0}


def cache_root() -> Path:
    """Where generated random checkpoints live: ``$VIDEOSYS_CACHE``, else ``$XDG_CACHE_HOME/videosys``, else
    ``~/.cache/videosys``."""
    env = os.environ.get("VIDEOSYS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "videosys"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _make_random(folder: Path, config: dict[str, Any], seed: int) -> None:
    """Turn a copied component folder into a random one: the full-size config, no weights, a marker."""
    for item in folder.iterdir():
        if item.name.endswith(WEIGHT_SUFFIXES) or item.name.endswith(".index.json"):
            item.unlink()
    _write(folder / "config.json", config)
    _write(folder / RANDOM_MARKER, {"seed": seed})


def _latte(root: Path, seed: int) -> None:
    _make_random(root / "transformer", {**_read(root / "transformer" / "config.json"), **LATTE_1}, seed + 1)
    _make_random(root / "vae", {**_read(root / "vae" / "config.json"), **SD_VAE}, seed + 2)
    _make_random(root / "text_encoder", {**_read(root / "text_encoder" / "config.json"), **T5_XXL}, seed + 3)


def _opensora(root: Path, seed: int) -> None:
    from ..testing.tiny_opensora_vae import OFFICIAL_CONFIG

    _make_random(root / "transformer", {**_read(root / "transformer" / "config.json"), **STDIT3_V3}, seed + 1)
    _make_random(root / "vae", copy.deepcopy(OFFICIAL_CONFIG), seed + 2)
    _make_random(root / "text_encoder", {**_read(root / "text_encoder" / "config.json"), **T5_XXL}, seed + 3)


def _opensora_plan(root: Path, seed: int) -> None:
    from ..testing.tiny_causal_vae import OFFICIAL_CONFIG as CAUSAL_VAE
    from ..testing.tiny_opensora_plan import OFFICIAL_TRANSFORMER_CONFIG

    template = next(p for p in sorted(root.iterdir()) if p.is_dir() and p.name[0].isdigit())
    for frames, video_length in ((65, 17), (221, 56)):
        folder = root / f"{frames}x512x512"
        shutil.copytree(template, folder)
        _make_random(folder, {**OFFICIAL_TRANSFORMER_CONFIG, "video_length": video_length}, seed + frames)
    for p in list(root.iterdir()):
        if p.is_dir() and p.name[0].isdigit() and not p.name.endswith("x512x512"):
            shutil.rmtree(p)
    _make_random(root / "vae", copy.deepcopy(CAUSAL_VAE), seed + 2)
    _make_random(root / "text_encoder", {**_read(root / "text_encoder" / "config.json"), **T5_XXL}, seed + 3)


_WRITERS = {"latte": _latte, "opensora": _opensora, "opensora-plan": _opensora_plan}


def write_random_checkpoint(model: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the random checkpoint of ``model`` (``latte``, ``opensora``, ``opensora-plan``) to ``folder``
    (replaced atomically if it exists)."""
    if model not in _WRITERS:
        raise ValueError(f"weights: 'random' not available for model {model!r} (available: {', '.join(_WRITERS)})")
    source = project_root() / "models" / f"{model}-smoke"
    if not source.is_dir():
        raise FileNotFoundError(f"weights: 'random' needs the bundled {source} (tokenizer and scheduler files)")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        root = tmp / "checkpoint"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "videosys.yaml"))
        _WRITERS[model](root, seed)
        _write(root / RANDOM_MARKER, {"seed": seed, "model": model})
        if folder.exists():
            shutil.rmtree(folder)
        root.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote the random %s checkpoint %s", model, folder)
    return folder


def random_checkpoint(model: str, seed: int = 0) -> Path:
    """The cached random checkpoint of ``model`` (written on first use)."""
    folder = cache_root() / "random" / f"{model}-seed{seed}"
    marker = folder / RANDOM_MARKER
    if not (marker.is_file() and _read(marker) == {"seed": seed, "model": model}):
        write_random_checkpoint(model, folder, seed)
    return folder
