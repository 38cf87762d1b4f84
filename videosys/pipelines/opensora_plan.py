"""Open-Sora-Plan v1.1: T5-XXL, the LatteT2V variant, CausalVAE 4x8x8, PNDM (shared reference models.md
section 2). Sampling is Latte's (text cut to the prompt's valid tokens, the negative cut to the same length,
CFG batch ``[neg, pos]``, epsilon from the first half of the learned-sigma output), so this pipeline reuses
:class:`LattePipeline` and changes what differs:

- one transformer per video length: a local checkpoint holds ``<frames>x<height>x<width>/`` folders
  (``65x512x512/``, ``221x512x512/``) next to ``vae/`` and ``text_encoder/``; the pipeline loads the one a
  request needs and keeps one loaded at a time;
- latents have ``(frames - 1) / 4 + 1`` frames (the causal VAE keeps the first frame apart);
- decoding goes through the CausalVAE (``z / 0.18215``, tiled in time and space);
- the scheduler is diffusers' ``PNDMScheduler`` with its defaults (the checkpoint has no ``scheduler/``;
  one is used if present): 150 steps are 159 denoiser calls, and PAB plans over those calls.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import WeightsNotFoundError
from ..parallel import ParallelState
from ..request import GenerationRequest
from ..schedulers import DiffusersSchedulerFactory
from .base import load_t5
from .latte import LattePipeline

logger = logging.getLogger(__name__)

SCHEDULER = "PNDMScheduler"
VARIANT_FOLDER = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def variant_folder(frames: int, height: int, width: int) -> str:
    """The transformer folder of a video size, as the official repository names them (``65x512x512``)."""
    return f"{frames}x{height}x{width}"


def find_variants(checkpoint: Path) -> dict[tuple[int, int, int], Path]:
    """Transformer folders of a checkpoint: ``(frames, height, width) -> folder`` (those with a config.json)."""
    found = {}
    for child in sorted(checkpoint.iterdir()):
        match = VARIANT_FOLDER.match(child.name)
        if match and child.is_dir() and (child / "config.json").is_file():
            found[tuple(int(g) for g in match.groups())] = child
    return found


class OpenSoraPlanPipeline(LattePipeline):
    components = ("vae", "text_encoder")

    def __init__(self, *, variants: dict[tuple[int, int, int], Path], loaded: tuple[int, int, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.variants = dict(variants)
        self.loaded_variant = loaded

    @classmethod
    def load(cls, checkpoint: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
             parallel: ParallelState | None = None) -> OpenSoraPlanPipeline:
        from ..models.opensora_plan import CausalVAE

        checkpoint = Path(checkpoint)
        variants = find_variants(checkpoint)
        if not variants:
            raise WeightsNotFoundError(
                f"weights: {str(checkpoint)!r} holds no transformer folder: expected one per video length, named "
                f"FRAMESxHEIGHTxWIDTH with a config.json (the official {variant_folder(65, 512, 512)}/, "
                f"{variant_folder(221, 512, 512)}/)"
            )
        logger.info("loading Open-Sora-Plan from %s on %s (%s); transformers for %s", checkpoint, device, dtype,
                    ", ".join(p.name for p in variants.values()))
        sampling = config.sampling
        wanted = (int(sampling.frames), sampling.height, sampling.width)
        first = wanted if wanted in variants else next(iter(variants))
        parallel = parallel or ParallelState.single()
        tokenizer, text_encoder = load_t5(checkpoint, dtype, encoder=parallel.is_driver, device=device)
        vae = CausalVAE.from_pretrained(checkpoint / "vae", dtype=dtype, device=device)
        transformer = cls._load_transformer(variants[first], dtype, device)
        if (checkpoint / "scheduler").is_dir():
            scheduler = DiffusersSchedulerFactory.from_folder(checkpoint / "scheduler", SCHEDULER)
        else:
            scheduler = DiffusersSchedulerFactory.from_defaults(SCHEDULER)
        for module in (text_encoder, vae):
            if module is not None:
                module.to(device).eval().requires_grad_(False)
        return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                   scheduler_factory=scheduler, config=config, device=device, dtype=dtype, parallel=parallel,
                   variants=variants, loaded=first)

    @staticmethod
    def _load_transformer(folder: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        from ..models.opensora_plan import OpenSoraPlanTransformer3D

        model = OpenSoraPlanTransformer3D.from_pretrained(folder, dtype=dtype, device=device)
        return model.to(device).eval().requires_grad_(False)

    def check(self, request: GenerationRequest) -> None:
        """The checkpoint must hold the transformer folder of the request's length and size."""
        super().check(request)
        key = (request.frames, request.height, request.width)
        if key not in self.variants:
            have = ", ".join(p.name + "/" for p in self.variants.values())
            raise WeightsNotFoundError(
                f"weights: {request.frames} frames at {request.height}x{request.width} need the transformer folder "
                f"{variant_folder(*key)}/, which the checkpoint lacks (it has {have})"
            )

    # -- hooks of the Latte sampling loop --------------------------------------------------------------
    def transformer_for(self, request: GenerationRequest) -> torch.nn.Module:
        """The transformer trained for the request's length and size; a different one replaces the loaded one."""
        key = (request.frames, request.height, request.width)
        if key == self.loaded_variant:
            return self.transformer
        self.check(request)
        folder = self.variants[key]
        logger.info("switching the Open-Sora-Plan transformer to %s", folder.name)
        self.transformer = None  # drop the old weights before the new ones load
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.transformer = self._load_transformer(folder, self.dtype, self.device)
        self.apply_denoiser_options()  # the new transformer's too (fused kernels off, compile)
        self.loaded_variant = key
        return self.transformer

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        """``[1, 4, (frames - 1) / 4 + 1, height / 8, width / 8]``."""
        f = self.vae.spatial_downsample
        return (1, self.vae.latent_channels, self.vae.latent_frames(request.frames),
                request.height // f, request.width // f)

    def decode(self, latents: torch.Tensor, request: GenerationRequest) -> torch.Tensor | None:
        """[1, 4, t, h, w] latents -> [frames, 3, H, W] in [-1, 1] through the tiled CausalVAE, its tiles split
        over the ranks (the video on the driver, ``None`` elsewhere)."""
        video = self.vae.decode(latents.to(self.dtype) / self.vae.scaling_factor, parallel=self.parallel)
        return None if video is None else video[0, :, : request.frames].permute(1, 0, 2, 3)
