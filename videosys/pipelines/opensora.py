"""Open-Sora 1.2: T5-XXL text encoder, STDiT3 transformer, Open-Sora VAE v1.2, RFLOW sampling
(shared reference models.md section 1).

A local checkpoint folder holds the three official repositories side by side::

    transformer/    hpcai-tech/OpenSora-STDiT-v3   (config.json + model.safetensors)
    vae/            hpcai-tech/OpenSora-VAE-v1.2   (config.json + model.safetensors)
    text_encoder/   DeepFloyd/t5-v1_1-xxl          (T5 weights and its tokenizer files)
    tokenizer/      optional; otherwise the tokenizer is read from text_encoder/

Sampling follows the reference: the prompt gets the aesthetic-score suffix and is cleaned, T5 encodes it
padded to 300 tokens with its mask; classifier-free guidance runs the batch ``[cond, null]`` where the
unconditional input is the model's learned null caption cut by the same mask; the velocity of the first
``in_channels`` output channels drives Euler steps over the RFLOW schedule; the latent is kept in float32
between steps and cast to the model dtype for each call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..pab import PABStats
from ..parallel import ParallelState
from ..request import GenerationRequest
from ..result import GenerationResult
from ..schedulers.rflow import RFlowSchedule
from ..text import clean_caption, with_aesthetic_score
from .base import Pipeline, StageTimer, initial_noise, load_t5, to_uint8_frames
from .cuda_graph import replayed_calls

logger = logging.getLogger(__name__)


class OpenSoraPipeline(Pipeline):
    components = ("transformer", "vae", "text_encoder")

    def __init__(self, *, tokenizer, text_encoder, vae, transformer, config: ModelConfig,
                 device: torch.device, dtype: torch.dtype, parallel: ParallelState | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder  # None on the ranks that never encode text
        self.vae = vae
        self.transformer = transformer
        self.config = config
        self.device = device
        self.dtype = dtype
        self.in_channels = transformer.config.in_channels
        self.parallel = parallel or ParallelState.single()

    @classmethod
    def load(cls, checkpoint: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
             parallel: ParallelState | None = None) -> OpenSoraPipeline:
        from ..models.opensora.stdit3 import STDiT3
        from ..models.opensora.vae import OpenSoraVAE

        checkpoint = Path(checkpoint)
        parallel = parallel or ParallelState.single()
        logger.info("loading Open-Sora from %s on %s (%s)", checkpoint, device, dtype)
        tokenizer, text_encoder = load_t5(checkpoint, dtype, encoder=parallel.is_driver, device=device)
        vae = OpenSoraVAE.from_pretrained(checkpoint / "vae", dtype=dtype, device=device)
        transformer = STDiT3.from_pretrained(checkpoint / "transformer", dtype=dtype, device=device)
        for module in (text_encoder, vae, transformer):
            if module is not None:
                module.to(device).eval().requires_grad_(False)
        return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                   config=config, device=device, dtype=dtype, parallel=parallel)

    # -- stages -----------------------------------------------------------------------------------
    def prepare_prompt(self, prompt: str) -> str:
        """The text T5 sees: the aesthetic-score suffix, then caption cleaning (the reference's order)."""
        text = with_aesthetic_score(prompt, self.config.text.get("aesthetic_score"))
        if self.config.text.get("clean_caption", True):
            text = clean_caption(text)
        return text

    def encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 features ``[1, max_length, C]`` (model dtype) and the token mask ``[1, max_length]``."""
        tokens = self.tokenizer(
            [self.prepare_prompt(prompt)], padding="max_length", max_length=self.config.text_max_length,
            truncation=True, return_attention_mask=True, add_special_tokens=True, return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        with self.text_encoder_on_device():
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.to(self.dtype), mask

    def denoise(self, request: GenerationRequest, text: torch.Tensor, mask: torch.Tensor,
                progress: bool) -> tuple[torch.Tensor, PABStats, int]:
        """The denoised latent, the PAB counters and the calls replayed from CUDA graphs."""
        schedule = RFlowSchedule.create(request.steps, request.height, request.width, request.frames)
        t_lat, h_lat, w_lat = self.vae.latent_size(request.frames, request.height, request.width)
        shape = (1, self.vae.out_channels, t_lat, h_lat, w_lat)
        # the reference draws the noise in the model dtype, then keeps the latent in float32
        z = initial_noise(shape, request.seed, self.device, self.dtype).float()
        cfg = request.guidance > 1.0
        # The caption's valid tokens are a prefix (T5 pads on the right): cut to it once per request and pass no
        # mask, as the model would do on every call, so the loop has no per-call host reads of the mask
        # (the same numbers; the mask-free attention path; a step towards capturing the loop in CUDA graphs).
        valid = int(mask[0].sum())  # the one host read of the request, outside the loop
        text = text[:, :valid]
        if cfg:  # CFG batch [cond, null caption cut like the prompt]
            null = self.transformer.null_caption.to(device=self.device, dtype=text.dtype)[None, :valid]
            text = self.cfg_branch(torch.cat([text, null]))
        batch = text.shape[0]
        # embedded once for every call, and each cross-attention's folded context kept from the first call
        caption = self.transformer.prepare_caption(text)
        both_branches = cfg and not self.parallel.cfg_enabled
        # fps, height and width take the model dtype's values, as in the reference (which passes model-dtype
        # tensors): in bfloat16 854 becomes 856, which sets the position-table scale the official weights
        # were sampled with. The sizes go in as numbers rounded here on the host: as GPU tensors the model
        # would read them back on every call, two host syncs per step.
        fps = torch.full((batch,), float(request.fps), device=self.device, dtype=self.dtype)
        height, width = (float(torch.tensor(float(v), dtype=self.dtype)) for v in (request.height, request.width))
        with self.pab_run(request, schedule.model_timesteps) as run:
            denoiser = self.denoiser_calls(run, lambda z_in, t: self.transformer(
                z_in, t, caption, None, fps=fps, height=height, width=width, pab=run, parallel=self.parallel))
            for i in tqdm(range(len(schedule)), desc="denoise", disable=not progress, leave=False):
                run.begin_call()
                z_in = z.to(self.dtype)
                z_in = torch.cat([z_in, z_in]) if both_branches else z_in
                t = torch.full((batch,), schedule.timesteps[i], device=self.device)
                out = denoiser(z_in, t)
                v = self.cfg_join(out[:, : self.in_channels].float())  # learned sigma: the velocity is the first half
                if cfg:
                    v_cond, v_uncond = v.chunk(2)
                    v = v_uncond + request.guidance * (v_cond - v_uncond)
                z = z + v * schedule.dts[i]
        return z, run.stats, replayed_calls(denoiser)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor | None:
        """[1, C, T', h, w] latents -> [num_frames, 3, H, W] in [-1, 1]; the VAE's temporal chunks are split
        over the ranks (the video on the driver, ``None`` elsewhere)."""
        video = self.vae.decode(z.to(self.dtype), num_frames=num_frames, parallel=self.parallel)
        return None if video is None else video[0, :, :num_frames].permute(1, 0, 2, 3)

    # -- one request ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, request: GenerationRequest, progress: bool = True) -> GenerationResult | None:
        self.parallel.stats.reset()
        progress = progress and self.parallel.is_driver
        timer = StageTimer(self.device)
        with timer.stage("total"):
            with timer.stage("text_encoder"):
                text, mask = self.shared(lambda: self.encode_text(request.prompt))
            with timer.stage("denoise"):
                z, stats, replayed = self.denoise(request, text, mask, progress)
            with timer.stage("vae_decode"):
                video = self.decode(z, request.frames)
                frames = None if video is None else to_uint8_frames(video)
        return self.finish(request, frames, timer.seconds, stats, replayed)
