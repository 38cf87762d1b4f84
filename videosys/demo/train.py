"""Train the demo text-to-video model on procedurally generated clips and write it as a Latte-1 checkpoint.

``python scripts/train_demo.py --out models/latte-demo --minutes 12 --seed 0`` (on a GPU) runs, inside the
time budget:

1. render ``clips`` training clips (:mod:`videosys.demo.clips`; held-out combinations never appear);
2. train a small ``diffusers.AutoencoderKL`` (3 blocks: 4x spatial downsampling, 4 latent channels) on
   their frames with L1 + MSE reconstruction (pixels of the object weighted up: it covers a few percent
   of a frame and carries the colour and shape) and a small KL term, then set its ``scaling_factor`` to
   1 / std of the latents; or load one trained earlier (``--vae-from``);
3. encode every clip to latents ``[4, 16, 16, 16]`` (posterior mean x scaling factor);
4. train a small :class:`~videosys.models.latte.LatteTransformer3D` (Latte-1's architecture, fewer and
   narrower blocks) with the v-prediction objective on the linear beta schedule of the saved
   ``scheduler/`` config, conditioned on a frozen, randomly initialised small ``T5EncoderModel`` whose
   embeddings are exactly what :class:`videosys.pipelines.latte.LattePipeline` feeds at inference: the
   prompt's valid tokens only, and for the unconditional branch (``p_uncond`` of the samples) the
   embedding of the empty negative prompt cut to the same length;
5. save the EMA weights through ``diffusers.LattePipeline.save_pretrained`` (the layout of
   ``maxin-cn/Latte-1``) in float16, the tokenizer of :mod:`videosys.demo.tokenizer`, a ``videosys.yaml``
   overlay (size, frames, steps, guidance, PAB presets) and ``train_demo.json`` (the settings and the step
   counts actually run).

The two phases can run as separate jobs: ``--vae-only`` stops after the VAE (and its round-trip check) and
writes ``vae/`` and ``train_demo.json``; ``--vae-from DIR`` then trains the transformer on that VAE with the
whole budget.  ``--transformer-from DIR`` (with ``--vae-from`` of the same checkpoint) continues training the
transformer of an earlier demo checkpoint: its weights seed both the model and the EMA, its tokenizer and text
encoder are reused as they are, and the continuation draws its batches from a random stream of its
own (not a replay of the first job's).  ``train_demo.json`` keeps the step counts of every job.

Reproducibility: every random draw comes from ``--seed``.  With a time budget the number of optimiser
steps depends on the machine's speed; ``train_demo.json`` records them, and ``--vae-steps N --steps M``
replays the same schedule (bit-identical on CPU; on CUDA up to the non-determinism of its kernels).

On a CPU ``--device cpu --minutes 0.5`` uses the ``tiny`` size preset: a smoke test that writes a
loadable checkpoint in seconds (its videos are not meant to show anything).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from videosys.demo import clips as demo_clips

__all__ = ["SIZE_PRESETS", "DemoSizes", "TrainOptions", "build_parser", "main", "train"]

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.0001, 0.02  # the linear schedule of scheduler/scheduler_config.json
PREDICTION_TYPE = "v_prediction"  # written to scheduler/scheduler_config.json; the DDIM sampler reads it
MAX_CHECKPOINT_BYTES = 30 * 2**20


@dataclass(frozen=True)
class DemoSizes:
    """Model and data sizes of one preset."""

    frame_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 128)  # 3 blocks: 4x down, 16x16 latents of a 64x64 frame
    vae_layers_per_block: int = 2
    latent_channels: int = 4
    t5_d_model: int = 128
    t5_layers: int = 2
    t5_heads: int = 4
    t5_d_kv: int = 32
    t5_d_ff: int = 256
    dit_layers: int = 4
    dit_heads: int = 4
    dit_head_dim: int = 64
    patch_size: int = 2
    clips: int = 24000
    batch: int = 128
    vae_batch: int = 128
    lr: float = 4e-4
    vae_lr: float = 1e-3


SIZE_PRESETS: dict[str, DemoSizes] = {
    "demo": DemoSizes(),
    # a smoke test: loads and runs like the real thing, learns next to nothing
    "tiny": DemoSizes(vae_channels=(8, 8, 16), vae_layers_per_block=1, t5_d_model=32, t5_layers=1, t5_heads=2, t5_d_kv=16, t5_d_ff=64,
                      dit_layers=1, dit_heads=2, dit_head_dim=16, clips=48, batch=4, vae_batch=8),
}


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (recorded in ``train_demo.json``)."""

    out: Path
    minutes: float = 9.0  # one run fits a 10-minute GPU call with its eval
    seed: int = 0
    device: str = "cuda"
    size: str = "demo"
    sizes: DemoSizes = field(default_factory=DemoSizes)
    vae_fraction: float = 0.35  # share of the time budget spent on the VAE
    vae_steps: int | None = None  # fixed step counts replace the time budget of that phase
    steps: int | None = None
    p_uncond: float = 0.1
    kl_weight: float = 1e-4
    object_weight: float = 4.0  # extra reconstruction weight of pixels that differ from the frame's background
    vae_only: bool = False
    vae_from: Path | None = None
    transformer_from: Path | None = None  # continue training the transformer of an earlier demo checkpoint
    ema_decay: float = 0.999
    warmup: int = 300
    sample_steps: int = 20
    guidance: float = 7.0
    compile: bool = False
    eval_prompts: int = 0
    overwrite: bool = False


# -- small helpers ------------------------------------------------------------------------------------
def _generator(seed: int, stream: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator for one named random stream of the run (streams never share draws)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stream)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% as ``progress`` goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


class _Budget:
    """A phase ends after ``steps`` steps if given, else at the wall-clock ``deadline`` (but never before
    ``min_steps``, so that a tiny budget still runs every code path)."""

    min_steps = 2

    def __init__(self, deadline: float, steps: int | None) -> None:
        self.start = time.perf_counter()
        self.deadline = deadline
        self.steps = steps

    def progress(self, step: int) -> float:
        if self.steps is not None:
            return step / max(self.steps, 1)
        return (time.perf_counter() - self.start) / max(self.deadline - self.start, 1e-9)

    def done(self, step: int) -> bool:
        if self.steps is not None:
            return step >= self.steps
        return step >= self.min_steps and time.perf_counter() >= self.deadline


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class ClipSet:
    """Rendered training clips: uint8 frames ``[N, T, H, W, 3]`` and the index of each clip's attributes
    in ``keys`` (a (colour, shape, motion, background) combination of the training split)."""

    frames: np.ndarray
    key_index: np.ndarray
    keys: list[demo_clips.ClipAttributes]


def render_clips(count: int, seed: int, size: int) -> ClipSet:
    """Render ``count`` training clips; clip ``i`` depends only on ``(seed, i)``."""
    keys = [demo_clips.ClipAttributes(c, s, m, b) for (c, s, m) in demo_clips.train_combinations()
            for b in demo_clips.BACKGROUNDS]
    lookup = {k: i for i, k in enumerate(keys)}
    frames = np.empty((count, demo_clips.NUM_FRAMES, size, size, 3), dtype=np.uint8)
    key_index = np.empty(count, dtype=np.int64)
    for i in tqdm(range(count), desc="render clips", leave=False, mininterval=2.0):
        clip = demo_clips.make_clip(np.random.default_rng([seed, i]), split="train", size=size)
        frames[i] = clip.frames
        key_index[i] = lookup[clip.attributes]
    used, key_index = np.unique(key_index, return_inverse=True)  # keep only the keys that occur
    return ClipSet(frames=frames, key_index=key_index.astype(np.int64), keys=[keys[i] for i in used])


def _to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float ``[..., 3, H, W]`` in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float() / 127.5 - 1.0


# -- models -------------------------------------------------------------------------------------------
def make_vae(sizes: DemoSizes) -> Any:
    from diffusers import AutoencoderKL

    from videosys.testing.common import norm_groups

    n = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(sizes.vae_channels),
        layers_per_block=sizes.vae_layers_per_block, act_fn="silu", latent_channels=sizes.latent_channels,
        norm_num_groups=norm_groups(sizes.vae_channels), sample_size=sizes.frame_size, scaling_factor=1.0,
    )


def make_text_encoder(sizes: DemoSizes, vocab_size: int, seed: int) -> Any:
    """A T5 v1.1-style encoder with the library's own random init, drawn under ``seed``'s stream."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=sizes.t5_d_model, d_kv=sizes.t5_d_kv, d_ff=sizes.t5_d_ff,
        num_layers=sizes.t5_layers, num_decoder_layers=sizes.t5_layers, num_heads=sizes.t5_heads,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=True,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + 3)
        model = T5EncoderModel(config)
    return model.eval().requires_grad_(False)


def transformer_config(sizes: DemoSizes) -> dict[str, Any]:
    """The diffusers ``LatteTransformer3DModel`` config of the demo transformer (Latte-1's, smaller)."""
    dim = sizes.dit_heads * sizes.dit_head_dim
    factor = 2 ** (len(sizes.vae_channels) - 1)
    return {
        "num_attention_heads": sizes.dit_heads, "attention_head_dim": sizes.dit_head_dim,
        "in_channels": sizes.latent_channels, "out_channels": 2 * sizes.latent_channels, "num_layers": sizes.dit_layers,
        "dropout": 0.0, "cross_attention_dim": dim, "attention_bias": True, "sample_size": sizes.frame_size // factor,
        "patch_size": sizes.patch_size, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
        "caption_channels": sizes.t5_d_model, "video_length": demo_clips.NUM_FRAMES,
    }


@torch.no_grad()
def init_transformer(model: torch.nn.Module, generator: torch.Generator) -> None:
    """DiT / PixArt style init: Xavier linears with zero biases, small normal timestep and caption MLPs,
    zero cross-attention output and zero final projection (every block starts as the identity on the
    text path and the model predicts zero noise)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.Conv2d) and name == "pos_embed.proj":
            w = module.weight.view(module.weight.shape[0], -1)
            bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            module.weight.copy_((torch.rand(w.shape, generator=generator) * 2 * bound - bound).view_as(module.weight))
            module.bias.zero_()
    for name, param in model.named_parameters():
        if name.startswith(("adaln_single.", "caption_projection.")) and name.endswith("weight"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        elif name.endswith("scale_shift_table"):
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[-1]))
        elif ".attn2.to_out." in name or name.startswith("proj_out."):
            param.zero_()


class _EMA:
    """Exponential moving average of a module's floating-point state."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.float(), 1 - decay)


# -- phases -------------------------------------------------------------------------------------------
def _weighted_reconstruction(recon: torch.Tensor, x: torch.Tensor, object_weight: float) -> torch.Tensor:
    """MSE + L1/2 per pixel, averaged with weight ``1 + object_weight`` on pixels that differ from the frame's
    background (its top-left pixel: backgrounds are plain), 1 elsewhere."""
    background = x[:, :, :1, :1]
    is_object = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weight = 1.0 + object_weight * is_object
    per_pixel = ((recon - x) ** 2 + 0.5 * (recon - x).abs()).mean(dim=1, keepdim=True)
    return (weight * per_pixel).sum() / weight.sum()


def train_vae(vae: Any, clip_set: ClipSet, frames_gpu: torch.Tensor, options: TrainOptions,
              device: torch.device, deadline: float) -> dict[str, Any]:
    """Phase 1: fit the VAE on random frames of the clips; returns a log record."""
    sizes = options.sizes
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=sizes.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = _generator(options.seed, 11, device)
    budget = _Budget(deadline, options.vae_steps)
    n, t = frames_gpu.shape[:2]
    step, last = 0, {}
    bar = tqdm(desc="vae", total=options.vae_steps, leave=False, mininterval=2.0)
    while not budget.done(step):
        ci = torch.randint(0, n, (sizes.vae_batch,), generator=gen, device=device)
        fi = torch.randint(0, t, (sizes.vae_batch,), generator=gen, device=device)
        x = _to_unit(frames_gpu[ci, fi])
        for group in opt.param_groups:
            group["lr"] = sizes.vae_lr * _lr_factor(budget.progress(step), step, options.warmup)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen, device=device)
            recon = vae.decode(z).sample
        recon = recon.float()
        rec = _weighted_reconstruction(recon, x, options.object_weight)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + options.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 200 == 0 or step == 1:
            last = {"step": step, "rec": float(rec.detach()), "kl": float(kl.detach())}
            logger.info("vae step %d: rec %.5f kl %.3f", step, last["rec"], last["kl"])
    bar.close()
    vae.eval().requires_grad_(False)
    return {"steps": step, "last": last, "seconds": time.perf_counter() - budget.start}


@torch.no_grad()
def encode_latents(vae: Any, frames_gpu: torch.Tensor, device: torch.device, chunk: int = 2048,
                   scale: float | None = None) -> tuple[torch.Tensor, float]:
    """Every clip as latents ``[N, C, T, h, w]`` (posterior mean x scaling factor, float16) and the factor:
    ``scale`` if given, else 1 / std of these latents."""
    n, t = frames_gpu.shape[:2]
    flat = frames_gpu.reshape(n * t, *frames_gpu.shape[2:])
    parts = []
    for start in tqdm(range(0, flat.shape[0], chunk), desc="encode", leave=False, mininterval=2.0):
        with _autocast(device):
            parts.append(vae.encode(_to_unit(flat[start:start + chunk])).latent_dist.mean.float())
    z = torch.cat(parts)
    if scale is None:
        scale = float(1.0 / z.std().clamp_min(1e-6))
    z = (z * scale).reshape(n, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
    return z.to(torch.float16), scale


class CaptionBank:
    """T5 embeddings of every training caption, padded to one length, and of the empty negative prompt.

    ``hidden[k * per_key + j]`` is caption ``j`` of attribute key ``k`` (:func:`clips.captions_for` order);
    ``lengths`` are the valid token counts (EOS included) the pipeline cuts prompts to.
    """

    def __init__(self, keys: Sequence[demo_clips.ClipAttributes], tokenizer: Any, text_encoder: Any,
                 device: torch.device) -> None:
        captions = [demo_clips.captions_for(k) for k in keys]
        self.per_key = len(captions[0])
        flat = [c for group in captions for c in group]
        # the pipeline lower-cases and strips prompts before tokenising
        tokens = tokenizer([c.lower().strip() for c in flat], padding="longest", return_tensors="pt")
        self.max_len = int(tokens.input_ids.shape[1])
        text_encoder.to(device)
        hidden = []
        with torch.no_grad():
            for start in range(0, len(flat), 1024):
                ids = tokens.input_ids[start:start + 1024].to(device)
                mask = tokens.attention_mask[start:start + 1024].to(device)
                hidden.append(text_encoder(ids, attention_mask=mask)[0].float())
            empty = tokenizer([""], padding="max_length", max_length=self.max_len, return_tensors="pt")
            self.uncond = text_encoder(empty.input_ids.to(device),
                                       attention_mask=empty.attention_mask.to(device))[0].float()[0]
        self.hidden = torch.cat(hidden)
        self.lengths = tokens.attention_mask.sum(1).to(device)
        logger.info("caption bank: %d captions, up to %d tokens", len(flat), self.max_len)

    def batch(self, key_index: torch.Tensor, generator: torch.Generator, p_uncond: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, L, C]`` and key mask ``[B, L]`` for clips of the given keys (a random caption
        each; with probability ``p_uncond`` the negative prompt's embedding cut to that caption's length)."""
        device = key_index.device
        j = torch.randint(0, self.per_key, key_index.shape, generator=generator, device=device)
        idx = key_index * self.per_key + j
        hidden = self.hidden[idx]
        lengths = self.lengths[idx]
        drop = torch.rand(key_index.shape, generator=generator, device=device) < p_uncond
        hidden = torch.where(drop[:, None, None], self.uncond[None].expand_as(hidden), hidden)
        mask = torch.arange(self.max_len, device=device)[None] < lengths[:, None]
        return hidden, mask


@torch.no_grad()
def vae_round_trip_adherence(vae: Any, seed: int, size: int, device: torch.device, n: int = 48) -> dict[str, float]:
    """Scorer accuracy on held-out clips after encoding and decoding them: no generated video can score
    better than the VAE lets it, so a low value here means train the VAE longer, not the transformer."""
    from .scorer import detect, score

    rng = np.random.default_rng(seed * 1_000_003 + 99)
    hits = {"colour": 0, "shape": 0, "motion": 0, "all": 0}
    vae_dtype = next(vae.parameters()).dtype
    for _ in range(n):
        attributes = demo_clips.sample_attributes(rng, "held_out")
        frames = demo_clips.render_clip(attributes, demo_clips.sample_layout(rng, attributes.motion), size=size)
        x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).to(vae_dtype) / 127.5 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        video = ((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for key, ok in score(detect(video), (attributes.colour, attributes.shape, attributes.motion)).items():
            hits[key] += int(ok)
    return {k: v / n for k, v in hits.items()}


def train_transformer(model: torch.nn.Module, latents: torch.Tensor, key_index: torch.Tensor, bank: CaptionBank,
                      options: TrainOptions, device: torch.device, deadline: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Phase 2: v-prediction training; returns the EMA state dict and a log record."""
    sizes = options.sizes
    model.to(device).train()
    ema = _EMA(model, options.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.lr, weight_decay=0.0, betas=(0.9, 0.99))
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).float().to(device)
    # a continuation (--transformer-from) draws from a stream of its own, not a replay of the first job's
    gen = _generator(options.seed, 22 if options.transformer_from is not None else 21, device)
    forward = torch.compile(model) if options.compile else model
    budget = _Budget(deadline, options.steps)
    n = latents.shape[0]
    c = latents.shape[1]
    step, last, running = 0, {}, None
    bar = tqdm(desc="transformer", total=options.steps, leave=False, mininterval=2.0)
    while not budget.done(step):
        idx = torch.randint(0, n, (sizes.batch,), generator=gen, device=device)
        x0 = latents[idx].float()
        text, mask = bank.batch(key_index[idx], gen, options.p_uncond)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (sizes.batch,), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = sizes.lr * _lr_factor(budget.progress(step), step, options.warmup)
        with _autocast(device):
            out = forward(xt, t, text, mask)
        # v-prediction: at high noise the target is mostly -x0, so where the layout is decided (and only the
        # caption says where the shape goes) errors cost as much as at low noise; an epsilon target there is
        # almost the input itself, and a model trained on it learns to ignore the caption.
        target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        loss = F.mse_loss(out[:, :c].float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        value = float(loss.detach()) if step % 50 == 0 or step == 1 else None
        if value is not None:
            running = value if running is None else 0.9 * running + 0.1 * value
        if step % 500 == 0 or step == 1:
            last = {"step": step, "loss": running}
            logger.info("transformer step %d: loss %.4f (lr %.2e)", step, running, opt.param_groups[0]["lr"])
    bar.close()
    model.eval()
    return ema.shadow, {"steps": step, "last": last, "seconds": time.perf_counter() - budget.start}


def load_trained_vae(folder: Path, sizes: DemoSizes) -> tuple[Any, dict[str, Any]]:
    """The VAE of an earlier ``--vae-only`` run (or of a demo checkpoint): ``folder/vae``, in float32, checked
    against the preset; returns it and its log record (the earlier run's, with where it came from)."""
    from diffusers import AutoencoderKL

    vae_dir = folder / "vae"
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"--vae-from {folder}: no VAE there (expected {vae_dir / 'config.json'}; "
                                "write one with --vae-only)")
    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32, low_cpu_mem_usage=False)
    got = (tuple(vae.config.block_out_channels), int(vae.config.latent_channels), int(vae.config.sample_size))
    want = (tuple(sizes.vae_channels), sizes.latent_channels, sizes.frame_size)
    if got != want:
        raise ValueError(f"--vae-from {folder}: VAE has (block_out_channels, latent_channels, sample_size) {got}, "
                         f"this preset needs {want}")
    earlier: dict[str, Any] = {}
    log = folder / "train_demo.json"
    if log.is_file():
        earlier = dict(json.loads(log.read_text(encoding="utf-8")).get("vae", {}))
    earlier.setdefault("steps", 0)
    earlier["from"] = str(folder)
    return vae.eval().requires_grad_(False), earlier


def load_earlier_text_encoder(folder: Path) -> Any:
    """The text encoder of an earlier demo checkpoint, for ``--transformer-from``: its transformer was trained
    on exactly those embeddings (a fresh draw from the seed, and the tokenizer trained from it, are not the
    same across transformers / sentencepiece versions)."""
    from transformers import T5EncoderModel

    if not (folder / "text_encoder" / "config.json").is_file() or not (folder / "tokenizer").is_dir():
        raise FileNotFoundError(f"--transformer-from {folder}: expected text_encoder/ and tokenizer/ there")
    encoder = T5EncoderModel.from_pretrained(str(folder / "text_encoder"), torch_dtype=torch.float32)
    return encoder.eval().requires_grad_(False)


def load_earlier_transformer(model: torch.nn.Module, folder: Path, sizes: DemoSizes) -> dict[str, Any]:
    """Load the transformer of an earlier demo checkpoint into ``model`` (float32) for ``--transformer-from``;
    returns the earlier run's transformer log record."""
    from videosys.models.weights import (
        check_state_dict,
        find_weights,
        load_state_dict,
        read_config,
    )

    where = folder / "transformer"
    if not (where / "config.json").is_file():
        raise FileNotFoundError(f"--transformer-from {folder}: no transformer there (expected {where / 'config.json'})")
    want = transformer_config(sizes)
    config = read_config(where)
    got = {k: config.get(k) for k in want}
    if got != want:
        raise ValueError(f"--transformer-from {folder}: transformer config {got} differs from this preset's {want}")
    state = check_state_dict(model, load_state_dict(find_weights(where)), source=str(where))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    earlier: dict[str, Any] = {}
    log = folder / "train_demo.json"
    if log.is_file():
        data = json.loads(log.read_text(encoding="utf-8"))
        earlier = {"steps": data.get("transformer", {}).get("steps"), "seconds": data.get("transformer", {}).get("seconds"),
                   "earlier": data.get("transformer_from")}
    earlier["from"] = str(folder)
    return earlier


# -- saving -------------------------------------------------------------------------------------------
#: The demo checkpoint's PAB presets (timestep windows per kind, broadcast range in calls). They keep
#: Latte-1's preset names but were calibrated on the seed-0 demo model with ``videosys calibrate`` at
#: budgets 0.1 / 0.15 / 0.3 (docs/demo.md): Latte-1's published ranges (2/3/6 and up, MLP reuse) are for
#: 50 steps of a 28-block model and cost this 20-step, 4-block model 6 points of adherence.
DEMO_PAB_PRESETS: dict[str, dict[str, tuple[tuple[int, int], int]]] = {
    "pab236": {"spatial": ((125, 575), 2), "temporal": ((125, 625), 2), "cross": ((75, 775), 2)},
    "pab347": {"spatial": ((25, 725), 2), "temporal": ((75, 725), 2), "cross": ((25, 925), 2)},
    "pab469": {"spatial": ((25, 775), 3), "temporal": ((25, 775), 3), "cross": ((25, 925), 3)},
}


def overlay_text(options: TrainOptions) -> str:
    """The checkpoint's ``videosys.yaml``: its size, frames, sampling defaults and PAB presets
    (:data:`DEMO_PAB_PRESETS`)."""
    size = options.sizes.frame_size
    lines = [
        "# Overlay read by VideoSysEngine: the demo model trained by scripts/train_demo.py on synthetic clips.",
        "description: demo Latte trained on synthetic clips (a coloured shape moving over a plain background)",
        "sampling:",
        f"  steps: {options.sample_steps}",
        f"  guidance: {options.guidance}",
        f"  frames: {demo_clips.NUM_FRAMES}",
        f"  height: {size}",
        f"  width: {size}",
        "  fps: 8",
        "allowed:",
        f"  frames: [{demo_clips.NUM_FRAMES}]",
        f"  sizes: [[{size}, {size}]]",
        "pab:",
        "  # Calibrated on this checkpoint with `videosys calibrate` (docs/demo.md), not Latte-1's published ranges:",
        "  # budgets 0.1 / 0.15 / 0.3 on the mean rel_l2 of a 20-step run; no MLP broadcast.",
        "  default: pab236",
        "  presets:",
    ]
    for name, kinds in DEMO_PAB_PRESETS.items():
        lines.append(f"    {name}:")
        for kind, ((lo, hi), rng) in kinds.items():
            lines.append(f"      {kind}: {{window: [{lo}, {hi}], range: {rng}}}")
        lines.append("      mlp: null")
    return "\n".join(lines) + "\n"


def save_checkpoint(out: Path, *, vae: Any, text_encoder: Any, tokenizer_dir: Path, transformer_state: dict[str, torch.Tensor],
                    options: TrainOptions, record: dict[str, Any]) -> int:
    """Write the checkpoint folder (float16 weights); returns its size in bytes."""
    from diffusers import LattePipeline, LatteTransformer3DModel
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from videosys.testing.tiny_latte import make_scheduler

    transformer = LatteTransformer3DModel(**transformer_config(options.sizes))
    missing, unexpected = transformer.load_state_dict({k: v.cpu() for k, v in transformer_state.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"transformer state does not match diffusers' layout: missing {missing}, unexpected {unexpected}")
    modules = [transformer, vae.cpu(), text_encoder.cpu()]
    for module in modules:
        torch.nn.Module.to(module, torch.float16)
    pipeline = LattePipeline(tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)), text_encoder=text_encoder,
                             vae=vae, transformer=transformer,
                             scheduler=make_scheduler().__class__.from_config(make_scheduler().config,
                                                                               prediction_type=PREDICTION_TYPE))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        pipeline.save_pretrained(str(out), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for module in modules:
        torch.nn.Module.to(module, torch.float32)
    # the pipeline re-saves the tokenizer from memory: put the built folder (with spiece.model) back
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    (out / "videosys.yaml").write_text(overlay_text(options), encoding="utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    record["checkpoint_bytes"] = total
    (out / "train_demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return total


# -- the run ------------------------------------------------------------------------------------------
def train(options: TrainOptions) -> Path:
    """Run the whole training and write the checkpoint to ``options.out``; returns the folder."""
    from transformers import AutoTokenizer

    from videosys.demo.tokenizer import build_demo_tokenizer
    from videosys.models.latte import LatteTransformer3D
    from videosys.models.latte.transformer import LatteConfig
    from videosys.testing.common import prepare_output_dir

    start = time.perf_counter()
    deadline = start + options.minutes * 60.0
    device = torch.device(options.device)
    sizes = options.sizes
    out = Path(options.out)
    prepare_output_dir(out, options.overwrite, is_ours=lambda p: (p / "train_demo.json").is_file(),
                       what="a demo checkpoint (train_demo.json)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    record: dict[str, Any] = {
        "options": {**asdict(options), "out": str(out)},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "held_out": [list(c) for c in demo_clips.held_out_combinations()],
    }

    with tempfile.TemporaryDirectory(prefix="demo-tokenizer-") as tmp:
        if options.transformer_from is not None:  # continue with the earlier job's text side, as it is
            text_encoder = load_earlier_text_encoder(Path(options.transformer_from))
            tokenizer_dir = Path(shutil.copytree(Path(options.transformer_from) / "tokenizer", Path(tmp) / "tokenizer"))
        else:
            tokenizer_dir = build_demo_tokenizer(Path(tmp) / "tokenizer", seed=options.seed)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if options.transformer_from is None:
            text_encoder = make_text_encoder(sizes, len(tokenizer), options.seed)
        # saved in float16: train on exactly the embeddings the saved encoder gives
        torch.nn.Module.to(torch.nn.Module.to(text_encoder, torch.float16), torch.float32)

        t0 = time.perf_counter()
        clip_set = render_clips(sizes.clips, options.seed, sizes.frame_size)
        logger.info("rendered %d clips in %.1fs", sizes.clips, time.perf_counter() - t0)
        frames_gpu = torch.from_numpy(clip_set.frames).to(device)

        if options.vae_from is not None:
            vae, record["vae"] = load_trained_vae(Path(options.vae_from), sizes)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed * 1_000_003 + 2)
                vae = make_vae(sizes)
            # --vae-only: the whole budget but a margin for encoding, the round-trip check and saving
            share = 1.0 if options.vae_only else options.vae_fraction
            vae_deadline = start + share * (deadline - start) - (min(30.0, 0.1 * options.minutes * 60.0)
                                                                  if options.vae_only else 0.0)
            record["vae"] = train_vae(vae, clip_set, frames_gpu, options, device, vae_deadline)
        vae.to(device)
        # a continuation keeps the factor its transformer was trained with
        latents, scale = encode_latents(vae, frames_gpu, device, scale=float(vae.config.scaling_factor)
                                        if options.transformer_from is not None else None)
        vae.register_to_config(scaling_factor=scale)
        record["vae"]["scaling_factor"] = scale
        del frames_gpu
        logger.info("vae: %d steps, scaling factor %.4f", record["vae"]["steps"], scale)
        record["vae"]["round_trip_adherence"] = vae_round_trip_adherence(vae, options.seed, sizes.frame_size, device)
        logger.info("vae round trip (the transformer's ceiling): %s", record["vae"]["round_trip_adherence"])
        if options.vae_only:
            vae.to("cpu").save_pretrained(str(out / "vae"), safe_serialization=True)
            record["train_seconds"] = time.perf_counter() - start
            (out / "train_demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
            logger.info("wrote the VAE to %s after %.1fs", out / "vae", record["train_seconds"])
            return out

        bank = CaptionBank(clip_set.keys, tokenizer, text_encoder, device)
        model = LatteTransformer3D(LatteConfig.from_json_dict(transformer_config(sizes)))
        if options.transformer_from is not None:
            record["transformer_from"] = load_earlier_transformer(model, Path(options.transformer_from), sizes)
        else:
            init_transformer(model, _generator(options.seed, 1))
        params = sum(p.numel() for p in model.parameters())
        record["parameters"] = {"transformer": params, "vae": sum(p.numel() for p in vae.parameters()),
                                "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
        logger.info("parameters: %s", record["parameters"])
        key_index = torch.from_numpy(clip_set.key_index).to(device)
        save_margin = min(20.0, 0.05 * options.minutes * 60.0)
        state, record["transformer"] = train_transformer(model, latents, key_index, bank, options, device,
                                                         deadline - save_margin)
        logger.info("transformer: %d steps", record["transformer"]["steps"])
        record["train_seconds"] = time.perf_counter() - start
        total = save_checkpoint(out, vae=vae, text_encoder=text_encoder, tokenizer_dir=tokenizer_dir,
                                transformer_state=state, options=options, record=record)
    logger.info("wrote %s (%.1f MB) after %.1fs", out, total / 2**20, time.perf_counter() - start)
    if total > MAX_CHECKPOINT_BYTES:
        logger.warning("checkpoint is %.1f MB, over the %d MB target", total / 2**20, MAX_CHECKPOINT_BYTES // 2**20)

    if options.eval_prompts > 0:
        from videosys.demo.eval import evaluate, held_out_prompts
        from videosys.engine import VideoSysEngine

        engine = VideoSysEngine(model="latte", weights=out, device=str(device), progress=False)
        report = evaluate(engine, held_out_prompts(options.eval_prompts, seed=options.seed))
        record["eval"] = report.to_dict()
        logger.info("held-out adherence: %s", report.summary())
        (out / "train_demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint folder to write (e.g. models/latte-demo)")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole run (default 9)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--size", choices=["auto", *SIZE_PRESETS], default="auto",
                   help="size preset (auto: demo on cuda, tiny on cpu)")
    p.add_argument("--clips", type=int, default=None, help="training clips to render (default: the preset's)")
    p.add_argument("--batch", type=int, default=None, help="transformer batch size (default: the preset's)")
    p.add_argument("--patch-size", type=int, choices=[1, 2, 4], default=None,
                   help="transformer patch size on the 16x16 latents (default: the preset's, 2)")
    p.add_argument("--vae-only", action="store_true",
                   help="train the VAE with the whole budget, write OUT/vae and stop (for --vae-from)")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="use the VAE in DIR/vae (from --vae-only) and give the whole budget to the transformer")
    p.add_argument("--transformer-from", type=Path, default=None,
                   help="continue training the transformer of this earlier demo checkpoint (use with --vae-from of it)")
    p.add_argument("--lr", type=float, default=None, help="transformer peak learning rate (default: the preset's)")
    p.add_argument("--object-weight", type=float, default=4.0,
                   help="extra VAE reconstruction weight on the object's pixels (default 4)")
    p.add_argument("--vae-steps", type=int, default=None, help="fixed VAE steps instead of its time share")
    p.add_argument("--steps", type=int, default=None, help="fixed transformer steps instead of the time budget")
    p.add_argument("--vae-fraction", type=float, default=0.35, help="share of the budget for the VAE (default 0.35)")
    p.add_argument("--sample-steps", type=int, default=20, help="default sampling steps written to videosys.yaml")
    p.add_argument("--guidance", type=float, default=7.0, help="default guidance written to videosys.yaml")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument("--eval", dest="eval_prompts", type=int, default=0,
                   help="after saving, score this many held-out prompts (default 0: skip)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo checkpoint at --out")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size if args.size != "auto" else ("demo" if device.startswith("cuda") else "tiny")
    sizes = SIZE_PRESETS[size]
    if args.clips is not None:
        sizes = replace(sizes, clips=args.clips)
    if args.batch is not None:
        sizes = replace(sizes, batch=args.batch)
    if args.patch_size is not None:
        sizes = replace(sizes, patch_size=args.patch_size)
    if args.lr is not None:
        sizes = replace(sizes, lr=args.lr)
    return TrainOptions(out=Path(args.out), minutes=args.minutes, seed=args.seed, device=device, size=size,
                        sizes=sizes, vae_fraction=args.vae_fraction, vae_steps=args.vae_steps, steps=args.steps,
                        sample_steps=args.sample_steps, guidance=args.guidance, compile=args.compile,
                        eval_prompts=args.eval_prompts, overwrite=args.overwrite, vae_only=args.vae_only,
                        vae_from=args.vae_from, transformer_from=args.transformer_from,
                        object_weight=args.object_weight)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = options_from_args(args)
    if options.vae_only and options.vae_from is not None:
        raise SystemExit("train_demo: --vae-only and --vae-from exclude each other")
    if options.transformer_from is not None and (options.vae_from is None or options.vae_only):
        raise SystemExit("train_demo: --transformer-from needs --vae-from (the VAE its transformer was trained on)")
    logger.info("training the demo model: %s preset on %s, %.2f minutes, seed %d -> %s",
                options.size, options.device, options.minutes, options.seed, options.out)
    train(options)
    return 0
