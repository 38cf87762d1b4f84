"""The Open-Sora v1.2 video VAE (``hpcai-tech/OpenSora-VAE-v1.2``), checkpoint-compatible.

Two stages, as the official ``VideoAutoencoderPipeline``:

1. ``spatial_vae``: a diffusers ``AutoencoderKL`` (the SDXL VAE of PixArt-sigma) applied to every frame,
   8x spatial compression to 4 channels.  Latents are multiplied by :data:`SPATIAL_SCALING` (0.18215,
   hard-coded in the reference, not the SDXL config's 0.13025) and frames go through it in micro-batches
   of ``micro_batch_size`` images.
2. ``temporal_vae``: :class:`~videosys.models.opensora.temporal_vae.TemporalVAE` (``VAE_Temporal_SD``),
   4x causal compression along time, run on independent clips of ``micro_frame_size`` (17) frames; a
   clip of ``n`` frames has ``ceil(n / 4)`` latent frames (17 -> 5).

The final latent is normalised per channel: ``(z - shift) / scale``.

Checkpoint folder (the official layout)::

    config.json         model_type "VideoAutoencoderPipeline"; micro_frame_size, shift, scale,
                        vae_2d {type, from_pretrained, subfolder, micro_batch_size, ...},
                        vae_temporal {type "VAE_Temporal_SD", from_pretrained}
    model.safetensors   spatial_vae.module.*  (AutoencoderKL keys)
                        temporal_vae.*        (encoder / decoder / quant_conv / post_quant_conv)
                        scale, shift          (the normalisation buffers, [1, 4, 1, 1, 1])

The official code downloads the AutoencoderKL config from ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers``;
here its architecture is :data:`SDXL_VAE_CONFIG`.  Extensions of ``config.json`` read by this module (the
official file has none of them, so the defaults apply):

* ``vae_2d.config``: a dict of ``AutoencoderKL`` constructor arguments merged over :data:`SDXL_VAE_CONFIG`
  (keys starting with ``_`` are ignored);
* ``vae_temporal.filters``, ``vae_temporal.num_res_blocks``, ``vae_temporal.num_groups``: sizes of the
  temporal VAE (defaults 128, 4, 32).

Layouts: pixels ``[B, 3, T, H, W]`` in ``[-1, 1]``; latents ``[B, 4, T', H // 8, W // 8]``.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, overload

import torch
from torch import nn

from videosys.models.opensora.temporal_vae import TemporalVAE
from videosys.models.weights import load_pretrained
from videosys.parallel.decode import decode_split
from videosys.parallel.state import ParallelState

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "DEFAULT_MICRO_BATCH_SIZE",
    "DEFAULT_MICRO_FRAME_SIZE",
    "DEFAULT_SCALE",
    "DEFAULT_SHIFT",
    "MODEL_TYPE",
    "SDXL_VAE_CONFIG",
    "SPATIAL_SCALING",
    "DecodeClip",
    "OpenSoraVAE",
    "SpatialVAE",
    "build_autoencoder_kl",
]

logger = logging.getLogger(__name__)

MODEL_TYPE = "VideoAutoencoderPipeline"
SPATIAL_TYPE = "VideoAutoencoderKL"
TEMPORAL_TYPE = "VAE_Temporal_SD"

SPATIAL_SCALING = 0.18215
"""Factor applied to the 2D VAE latents (hard-coded in the reference implementation)."""

DEFAULT_SHIFT: tuple[float, ...] = (-0.10, 0.34, 0.27, 0.98)
DEFAULT_SCALE: tuple[float, ...] = (3.85, 2.32, 2.33, 3.06)
DEFAULT_MICRO_FRAME_SIZE = 17
DEFAULT_MICRO_BATCH_SIZE = 4

SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}
"""Architecture of ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers/vae`` (the SDXL VAE); its
``scaling_factor`` is not used (see :data:`SPATIAL_SCALING`)."""

# config.json keys of vae_2d / vae_temporal that this module knows (official ones + our extensions).
_SPATIAL_KEYS = {"type", "from_pretrained", "subfolder", "micro_batch_size", "local_files_only", "cache_dir", "config"}
_TEMPORAL_SIZE_KEYS = ("filters", "num_res_blocks", "num_groups")
_TEMPORAL_KEYS = {"type", "from_pretrained", *_TEMPORAL_SIZE_KEYS}

PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device, None]


def build_autoencoder_kl(overrides: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """An (uninitialised) ``AutoencoderKL`` with :data:`SDXL_VAE_CONFIG` updated by ``overrides``.

    Keys of ``overrides`` starting with ``_`` (``_class_name``, ``_diffusers_version``) are ignored; any
    other key that is not an ``AutoencoderKL`` argument raises ``ValueError``.
    """
    from diffusers import AutoencoderKL

    config = copy.deepcopy(SDXL_VAE_CONFIG)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ValueError(f"vae_2d.config must be a JSON object, got {type(overrides).__name__}")
        config.update({k: copy.deepcopy(v) for k, v in overrides.items() if not str(k).startswith("_")})
    accepted = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"vae_2d.config has keys AutoencoderKL does not take: {', '.join(unknown)}")
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        if key in config and isinstance(config[key], list):
            config[key] = tuple(config[key])
    return AutoencoderKL(**config)


def _channel_vector(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    """``value`` (a number or one number per channel) as a float32 ``[1, channels, 1, 1, 1]`` tensor."""
    if isinstance(value, (int, float)):
        values = [float(value)] * channels
    else:
        values = [float(v) for v in value]
        if len(values) != channels:
            raise ValueError(f"{name} needs {channels} values (one per latent channel), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32).reshape(1, channels, 1, 1, 1)


def _check_video(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what} must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels, got shape {tuple(x.shape)}")
    if x.shape[2] < 1:
        raise ValueError(f"{what} has no frames: shape {tuple(x.shape)}")


class SpatialVAE(nn.Module):
    """The official ``VideoAutoencoderKL``: a 2D ``AutoencoderKL`` (``self.module``) run over frames.

    ``[B, C, T, H, W]`` is treated as ``B * T`` images (batch-major) in micro-batches of
    ``micro_batch_size`` images (all at once when ``None``).
    """

    def __init__(self, autoencoder: AutoencoderKL, micro_batch_size: int | None = DEFAULT_MICRO_BATCH_SIZE) -> None:
        super().__init__()
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be positive or None, got {micro_batch_size}")
        self.module = autoencoder
        self.micro_batch_size = micro_batch_size

    @property
    def in_channels(self) -> int:
        return int(self.module.config.in_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Spatial compression: 2 per down block but the last."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    def _batches(self, count: int) -> list[tuple[int, int]]:
        step = self.micro_batch_size or count
        return [(i, min(i + step, count)) for i in range(0, count, step)]

    def encode(
        self, x: torch.Tensor, *, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents ``[B, latent_channels, T, H // f, W // f]`` of frames ``x`` ``[B, C, T, H, W]``."""
        b, c, t, h, w = x.shape
        images = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out: torch.Tensor | None = None
        for i0, i1 in self._batches(b * t):
            dist = self.module.encode(images[i0:i1]).latent_dist
            lat = dist.sample(generator=generator) if sample_posterior else dist.mode()
            lat = lat * SPATIAL_SCALING
            if out is None:
                out = lat.new_empty((b * t, *lat.shape[1:]))
            out[i0:i1] = lat
        assert out is not None
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)

    def decode_into(self, z: torch.Tensor, out: torch.Tensor | None = None, t0: int = 0) -> torch.Tensor:
        """Decode scaled latents ``z`` ``[B, c, t, h, w]`` and write the frames to ``out[:, :, t0:t0 + t]``.

        ``out`` (``[B, C, T, h * f, w * f]``) is allocated (with ``T = t0 + t``) when not given, in the
        dtype of the decoder output.  Returns ``out``.
        """
        b, _, t, _, _ = z.shape
        images = z.permute(0, 2, 1, 3, 4).reshape(b * t, *z.shape[1:2], *z.shape[3:])
        for i0, i1 in self._batches(b * t):
            frames = self.module.decode(images[i0:i1] / SPATIAL_SCALING).sample
            if out is None:
                out = frames.new_empty((b, frames.shape[1], t0 + t, *frames.shape[2:]))
            for j, i in enumerate(range(i0, i1)):
                out[i // t, :, t0 + i % t] = frames[j]
        assert out is not None
        return out


@dataclass(frozen=True)
class DecodeClip:
    """One independent piece of :meth:`OpenSoraVAE.decode`: a temporal clip, latent frames
    ``[z_start, z_start + z_frames)`` decoded to video frames ``[start, start + frames)``."""

    z_start: int
    z_frames: int
    start: int
    frames: int


class OpenSoraVAE(nn.Module):
    """Open-Sora v1.2 video VAE: :class:`SpatialVAE` (``spatial_vae``) + temporal VAE (``temporal_vae``).

    Args:
        autoencoder: the 2D VAE (default: :func:`build_autoencoder_kl` with no overrides, the SDXL VAE).
        micro_batch_size: images per 2D VAE call (``None``: all frames at once).
        micro_frame_size: frames per temporal VAE clip (``None``: the whole video is one clip).
        shift, scale: latent normalisation, one value per latent channel or one for all.
        temporal_filters, temporal_num_res_blocks, temporal_num_groups: temporal VAE sizes.
    """

    ignored_checkpoint_keys: tuple[str, ...] = ()

    def __init__(
        self,
        autoencoder: AutoencoderKL | None = None,
        *,
        micro_batch_size: int | None = DEFAULT_MICRO_BATCH_SIZE,
        micro_frame_size: int | None = DEFAULT_MICRO_FRAME_SIZE,
        shift: float | Sequence[float] = DEFAULT_SHIFT,
        scale: float | Sequence[float] = DEFAULT_SCALE,
        temporal_filters: int = 128,
        temporal_num_res_blocks: int = 4,
        temporal_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if micro_frame_size is not None and micro_frame_size < 1:
            raise ValueError(f"micro_frame_size must be positive or None, got {micro_frame_size}")
        self.spatial_vae = SpatialVAE(
            autoencoder if autoencoder is not None else build_autoencoder_kl(), micro_batch_size
        )
        channels = self.spatial_vae.latent_channels
        self.temporal_vae = TemporalVAE(
            in_out_channels=channels,
            latent_channels=channels,
            filters=temporal_filters,
            num_res_blocks=temporal_num_res_blocks,
            num_groups=temporal_num_groups,
        )
        self.micro_frame_size = micro_frame_size
        # Persistent, as in the reference: the official model.safetensors holds both ([1, 4, 1, 1, 1]).
        self.register_buffer("scale", _channel_vector(scale, channels, "scale"))
        self.register_buffer("shift", _channel_vector(shift, channels, "shift"))

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OpenSoraVAE:
        """Build (uninitialised) from an official ``config.json`` dict, with the extensions in the module
        docstring.  Raises ``ValueError`` for another model or sub-model type."""
        model_type = config.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        vae_2d = config.get("vae_2d") or {}
        vae_t = config.get("vae_temporal") or {}
        if not isinstance(vae_2d, Mapping) or not isinstance(vae_t, Mapping):
            raise ValueError("config vae_2d and vae_temporal must be JSON objects")
        if vae_2d.get("type", SPATIAL_TYPE) != SPATIAL_TYPE:
            raise ValueError(f"vae_2d.type {vae_2d.get('type')!r} is not supported (expected {SPATIAL_TYPE!r})")
        if vae_t.get("type", TEMPORAL_TYPE) != TEMPORAL_TYPE:
            raise ValueError(f"vae_temporal.type {vae_t.get('type')!r} is not supported (expected {TEMPORAL_TYPE!r})")
        for name, section, known in (("vae_2d", vae_2d, _SPATIAL_KEYS), ("vae_temporal", vae_t, _TEMPORAL_KEYS)):
            unknown = sorted(set(section) - known)
            if unknown:
                logger.warning("ignoring unknown config keys %s.%s", name, ", ".join(unknown))
        if config.get("cal_loss"):
            logger.warning("config cal_loss is true; it only changes training outputs and is ignored here")
        temporal = {f"temporal_{k}": int(vae_t[k]) for k in _TEMPORAL_SIZE_KEYS if k in vae_t}
        return cls(
            build_autoencoder_kl(vae_2d.get("config")),
            micro_batch_size=vae_2d.get("micro_batch_size", DEFAULT_MICRO_BATCH_SIZE),
            micro_frame_size=config.get("micro_frame_size", DEFAULT_MICRO_FRAME_SIZE),
            shift=config.get("shift", DEFAULT_SHIFT),
            scale=config.get("scale", DEFAULT_SCALE),
            **temporal,
        )

    @classmethod
    def from_pretrained(
        cls, folder: PathLike, dtype: torch.dtype | None = None, device: DeviceLike = None
    ) -> OpenSoraVAE:
        """Load an official folder (``config.json`` + ``model.safetensors``) in eval mode.

        Every key and shape is checked (``CheckpointMismatchError`` names the offenders). ``dtype``
        defaults to ``torch.get_default_dtype()``; the reference runs in bfloat16.
        """
        config: dict[str, Any] = {}

        def build(cfg: dict[str, Any]) -> OpenSoraVAE:
            config.update(cfg)
            return cls.from_config(cfg)

        model = load_pretrained(build, folder, dtype=dtype, device=device, weights_name="model")
        channels = model.out_channels
        for name, default in (("shift", DEFAULT_SHIFT), ("scale", DEFAULT_SCALE)):
            expected = _channel_vector(config.get(name, default), channels, name)
            stored = getattr(model, name).float().cpu()
            if not torch.allclose(stored, expected, atol=1e-2 * float(expected.abs().max()) + 1e-6):
                logger.warning(
                    "checkpoint %s %s differs from config.json %s; using the checkpoint's",
                    name,
                    stored.flatten().tolist(),
                    expected.flatten().tolist(),
                )
        return model

    # -- sizes ------------------------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        """Pixel channels (3)."""
        return self.spatial_vae.in_channels

    @property
    def out_channels(self) -> int:
        """Latent channels (4)."""
        return self.temporal_vae.latent_channels

    @property
    def spatial_downsample(self) -> int:
        """Spatial compression of the 2D VAE (8)."""
        return self.spatial_vae.downsample

    @property
    def time_downsample(self) -> int:
        """Temporal compression within one clip (4)."""
        return self.temporal_vae.time_downsample_factor

    @property
    def micro_z_frame_size(self) -> int | None:
        """Latent frames of a full clip of ``micro_frame_size`` frames (5), ``None`` without clips."""
        if self.micro_frame_size is None:
            return None
        return self.temporal_vae.latent_frames(self.micro_frame_size)

    def _clips(self, num_frames: int) -> list[int]:
        """Frame counts of the temporal clips of a video of ``num_frames`` frames."""
        size = self.micro_frame_size or num_frames
        return [min(size, num_frames - start) for start in range(0, num_frames, size)]

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of ``num_frames`` frames: ``5 * (n // 17) + ceil((n % 17) / 4)`` by default."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        return sum(self.temporal_vae.latent_frames(n) for n in self._clips(num_frames))

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(latent frames, height // 8, width // 8)`` of a ``num_frames x height x width`` video."""
        f = self.spatial_downsample
        if height < f or width < f:
            raise ValueError(f"frames of {height}x{width} are smaller than the VAE's {f}x{f} latent pixel")
        return (self.latent_frames(num_frames), height // f, width // f)

    @property
    def dtype(self) -> torch.dtype:
        return self.temporal_vae.decoder.conv_out.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.temporal_vae.decoder.conv_out.conv.weight.device

    # -- encode / decode --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """Normalised latents ``[B, 4, latent_frames(T), H // 8, W // 8]`` of ``x`` ``[B, 3, T, H, W]``.

        With ``sample`` (the reference behaviour) both posteriors are sampled, drawing noise from
        ``generator``; without it their means are used.
        """
        _check_video(x, self.in_channels, "encode input")
        x = x.to(self.dtype)
        x_z = self.spatial_vae.encode(x, sample_posterior=sample, generator=generator)
        clips = self._clips(x.shape[2])
        b, c, _, h, w = x_z.shape
        z = x_z.new_empty((b, self.out_channels, self.latent_frames(x.shape[2]), h, w))
        t_in = t_out = 0
        for n in clips:
            lat = self.temporal_vae.encode(x_z[:, :, t_in : t_in + n], sample_posterior=sample, generator=generator)
            z[:, :, t_out : t_out + lat.shape[2]] = lat
            t_in += n
            t_out += lat.shape[2]
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def decode_items(self, num_frames: int) -> list[DecodeClip]:
        """The temporal clips of a ``num_frames`` decode, in order: the independent pieces of work that
        :meth:`decode` with ``parallel`` spreads over the ranks (:meth:`decode_item` decodes one,
        :meth:`assemble` joins their outputs)."""
        clips = []
        z_start = start = 0
        for n in self._clips(num_frames):
            zt = self.temporal_vae.latent_frames(n)
            clips.append(DecodeClip(z_start=z_start, z_frames=zt, start=start, frames=n))
            z_start += zt
            start += n
        return clips

    def _check_latent(self, z: torch.Tensor, num_frames: int) -> None:
        _check_video(z, self.out_channels, "decode input")
        expected = self.latent_frames(num_frames)
        if z.shape[2] != expected:
            raise ValueError(f"{num_frames} frames have {expected} latent frames, but z has {z.shape[2]}")

    @torch.no_grad()
    def decode_item(self, z: torch.Tensor, clip: DecodeClip) -> torch.Tensor:
        """Frames ``[B, 3, clip.frames, h * 8, w * 8]`` of one clip of the normalised latent ``z`` (the whole
        ``[B, 4, t, h, w]`` latent that :meth:`decode` takes; only the clip's frames are read)."""
        zc = z[:, :, clip.z_start : clip.z_start + clip.z_frames].to(self.dtype)
        zc = zc * self.scale.to(zc.dtype) + self.shift.to(zc.dtype)
        return self.spatial_vae.decode_into(self.temporal_vae.decode(zc, num_frames=clip.frames))

    @staticmethod
    def assemble(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The video of the clips' decoded frames (:meth:`decode_item` outputs, in clip order)."""
        return outputs[0] if len(outputs) == 1 else torch.cat(list(outputs), dim=2)

    @overload
    def decode(self, z: torch.Tensor, num_frames: int, *, parallel: None = None) -> torch.Tensor: ...

    @overload
    def decode(self, z: torch.Tensor, num_frames: int, *, parallel: ParallelState) -> torch.Tensor | None: ...

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, num_frames: int, *, parallel: ParallelState | None = None
    ) -> torch.Tensor | None:
        """Frames ``[B, 3, num_frames, h * 8, w * 8]`` of normalised latents ``z`` ``[B, 4, t, h, w]``.

        ``num_frames`` must be a frame count whose latent has ``t`` frames (see :meth:`latent_frames`).
        Each temporal clip is decoded on its own and its frames go through the 2D decoder in
        micro-batches straight into the output, so only one clip's intermediate activations live at once.

        ``parallel``: every world rank of that state calls this with the same ``z``; the clips are split
        over the ranks (by frame count, :func:`~videosys.parallel.decode.decode_split`) and gathered on rank
        0, which returns the video (equal to the single-process decode up to float rounding); the other
        ranks return ``None``. Rank 0 then holds all clips' frames and the video at once.
        """
        self._check_latent(z, num_frames)
        if parallel is not None and parallel.world_size > 1:
            clips = self.decode_items(num_frames)
            outputs = decode_split(
                clips, lambda clip: self.decode_item(z, clip), parallel, z.device, costs=[c.frames for c in clips]
            )
            return None if outputs is None else self.assemble(outputs)
        z = z.to(self.dtype)
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        b, _, _, h, w = z.shape
        f = self.spatial_downsample
        out = z.new_empty((b, int(self.spatial_vae.module.config.out_channels), num_frames, h * f, w * f))
        for clip in self.decode_items(num_frames):
            x_z = self.temporal_vae.decode(z[:, :, clip.z_start : clip.z_start + clip.z_frames], num_frames=clip.frames)
            self.spatial_vae.decode_into(x_z, out, clip.start)
        return out

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Reconstruction of ``x``: ``decode(encode(x), T)``."""
        return self.decode(self.encode(x, generator=generator, sample=sample), x.shape[2])
