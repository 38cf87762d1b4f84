"""Latte-1: T5 text encoder, Latte transformer, AutoencoderKL, DDIM; the reference sampling of
``maxin-cn/Latte-1`` (shared reference models.md section 3)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..errors import WeightsNotFoundError
from ..models.latte import LatteTransformer3D
from ..models.layers.folded_attention import FoldedContextCache
from ..pab import PABStats
from ..parallel import ParallelState
from ..parallel.decode import decode_split
from ..request import GenerationRequest
from ..result import GenerationResult
from ..schedulers import DiffusersSchedulerFactory
from ..text import clean_caption
from .base import Pipeline, StageTimer, initial_noise, load_hf_component, load_t5, to_uint8_frames
from .cuda_graph import replayed_calls

logger = logging.getLogger(__name__)

VAE_DECODE_CHUNK = 14  # frames per VAE decode call, as the reference


class LattePipeline(Pipeline):
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

    def __init__(self, *, tokenizer, text_encoder, vae, transformer: LatteTransformer3D,
                 scheduler_factory: DiffusersSchedulerFactory, config: ModelConfig,
                 device: torch.device, dtype: torch.dtype, parallel: ParallelState | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder  # None on the ranks that never encode text
        self.vae = vae
        self.transformer = transformer
        self.scheduler_factory = scheduler_factory
        self.config = config
        self.device = device
        self.dtype = dtype
        self.parallel = parallel or ParallelState.single()

    @classmethod
    def load(cls, checkpoint: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
             parallel: ParallelState | None = None) -> LattePipeline:
        from diffusers import AutoencoderKL

        checkpoint = Path(checkpoint)
        parallel = parallel or ParallelState.single()
        logger.info("loading Latte from %s on %s (%s)", checkpoint, device, dtype)
        tokenizer, text_encoder = load_t5(checkpoint, dtype, encoder=parallel.is_driver, device=device)
        try:
            vae = load_hf_component(AutoencoderKL, checkpoint / "vae", dtype, device,
                                    {"torch_dtype": dtype, "low_cpu_mem_usage": False})
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"weights: could not load the VAE of {str(checkpoint)!r}: {exc}") from None
        transformer = LatteTransformer3D.from_pretrained(checkpoint / "transformer", dtype=dtype, device=device)
        scheduler = DiffusersSchedulerFactory.from_folder(checkpoint / "scheduler", "DDIMScheduler")
        for module in (text_encoder, vae, transformer):  # already in dtype; only the device moves
            if module is not None:
                module.to(device).eval().requires_grad_(False)
        return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                   scheduler_factory=scheduler, config=config, device=device, dtype=dtype, parallel=parallel)

    # -- stages -----------------------------------------------------------------------------------
    def prepare_prompt(self, text: str) -> str:
        """The text T5 sees: lower-cased and stripped as the reference; with ``text.clean_caption`` in the
        model config also the reference caption cleaning (which lower-cases too)."""
        if self.config.text.get("clean_caption", False):
            return clean_caption(text)
        return text.lower().strip()

    def encode_text(self, prompt: str, negative_prompt: str, guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """T5 embeddings of the prompt cut to its L valid tokens, and of the negative prompt cut to the same
        L (the reference's single-prompt masking); the negative is None without CFG."""
        texts = [prompt] if guidance <= 1.0 else [prompt, negative_prompt]
        tokens = self.tokenizer(
            [self.prepare_prompt(t) for t in texts], padding="max_length", max_length=self.config.text_max_length,
            truncation=True, return_attention_mask=True, add_special_tokens=True, return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        with self.text_encoder_on_device():
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0].to(self.dtype)
        length = int(mask[0].sum().item())  # one host read per request, outside the denoise loop
        hidden = hidden[:, :length]
        return hidden[:1], (hidden[1:] if len(texts) > 1 else None)

    def denoise(self, request: GenerationRequest, cond: torch.Tensor, uncond: torch.Tensor | None,
                progress: bool) -> tuple[torch.Tensor, PABStats, int]:
        """The denoised latents, the PAB counters and the calls replayed from CUDA graphs."""
        scheduler = self.scheduler_factory.new()
        # the schedule stays on the host: the diffusers schedulers index their host tables with the timestep,
        # which for a GPU timestep is a read back, a host sync, several per step
        scheduler.set_timesteps(request.steps)
        timesteps = scheduler.timesteps
        cfg = uncond is not None
        text = self.cfg_branch(torch.cat([uncond, cond])) if cfg else cond  # CFG order [neg, pos]
        transformer = self.transformer_for(request)
        latents = initial_noise(self.latent_shape(request), request.seed, self.device, self.dtype)
        latents = latents * scheduler.init_noise_sigma
        in_channels = latents.shape[1]
        step_kwargs = self.scheduler_factory.step_kwargs
        both_branches = cfg and not self.parallel.cfg_enabled
        folded = FoldedContextCache()  # the caption's folded cross-attention, made on the first call, reused
        with self.pab_run(request, [float(t) for t in timesteps]) as run:
            denoiser = self.denoiser_calls(run, lambda model_in, t_batch: transformer(
                model_in, t_batch, text, pab=run, parallel=self.parallel, folded=folded))
            for t in tqdm(timesteps, desc="denoise", disable=not progress, leave=False):
                run.begin_call()
                model_in = torch.cat([latents, latents]) if both_branches else latents
                model_in = scheduler.scale_model_input(model_in, t)
                # filled on the device (a copy of the host value would wait for the queue)
                t_batch = torch.full((model_in.shape[0],), t.item(), dtype=t.dtype, device=self.device)
                noise = self.cfg_join(denoiser(model_in, t_batch))
                if cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + request.guidance * (noise_cond - noise_uncond)
                noise = noise[:, :in_channels]  # learned sigma: keep the epsilon channels
                latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        return latents, run.stats, replayed_calls(denoiser)

    def transformer_for(self, request: GenerationRequest) -> torch.nn.Module:
        """The denoiser that serves ``request`` (one for every size here)."""
        return self.transformer

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        """``[1, C, F, h, w]``: the image VAE keeps every frame and downsamples space by its factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (1, self.transformer.config.in_channels, request.frames, request.height // factor, request.width // factor)

    def decode(self, latents: torch.Tensor, request: GenerationRequest) -> torch.Tensor | None:
        """[1, C, F, h, w] latents -> [F, 3, H, W] in [-1, 1], decoded a chunk of frames at a time (the chunks
        split over the ranks; the video on the driver, ``None`` elsewhere)."""
        z = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        starts = list(range(0, z.shape[0], VAE_DECODE_CHUNK))
        chunks = decode_split(starts, lambda i: self.vae.decode(z[i:i + VAE_DECODE_CHUNK]).sample,
                              self.parallel, self.device)
        return None if chunks is None else torch.cat(chunks)

    # -- one request ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, request: GenerationRequest, progress: bool = True) -> GenerationResult | None:
        self.parallel.stats.reset()
        progress = progress and self.parallel.is_driver
        timer = StageTimer(self.device)
        with timer.stage("total"):
            with timer.stage("text_encoder"):
                cond, uncond = self.shared(
                    lambda: self.encode_text(request.prompt, request.negative_prompt, request.guidance))
            with timer.stage("denoise"):
                latents, stats, replayed = self.denoise(request, cond, uncond, progress)
            with timer.stage("vae_decode"):
                video = self.decode(latents, request)
                frames = None if video is None else to_uint8_frames(video)
        return self.finish(request, frames, timer.seconds, stats, replayed)
