"""The Open-Sora-Plan v1.1 transformer: Latte's skeleton (shared code, :class:`LatteTransformer3D`) with the
differences of ``LanguageBind/Open-Sora-Plan-v1.1.0`` (shared reference models.md section 2).

Checkpoint folders ``65x512x512/`` and ``221x512x512/`` hold ``config.json`` (``_class_name: LatteT2V``) and
``diffusion_pytorch_model.safetensors``; keys are Latte-1's, plus ``caption_projection.y_embedding``
([120, 4096], a training-time buffer that inference never reads: accepted on load and dropped).

What differs from Latte-1:

- the temporal sin-cos table covers ``video_length`` latent frames (17 or 56) at positions
  ``arange(n) / s`` with the interpolation scale ``s = max((L - 1) // 16, 1)`` for odd ``L = video_length``
  and ``max(L // 16, 1)`` for even ``L`` (17 -> 1, 56 -> 3), unless the config sets ``interpolation_scale_1d``;
- the table is added before the first temporal block for every frame count (Latte-1 skips one frame);
- the config stores ``sample_size`` as ``[h, w]`` and carries fields inference does not use
  (``attention_mode``, ``model_max_length``...). Features this implementation does not have
  (``use_rope``, ``compress_kv_factor`` other than 1, ``patch_size_t`` other than 1, a non-square
  ``sample_size``) are refused when the config is read, by name.

The text is not masked: the pipeline cuts the T5 features to the prompt's valid tokens instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..latte.transformer import LatteConfig, LatteTransformer3D
from ..layers.embeddings import get_1d_sincos_pos_embed

logger = logging.getLogger(__name__)

CLASS_NAME = "LatteT2V"
UNUSED_CAPTION_BUFFER = "caption_projection.y_embedding"


def temporal_interpolation_scale(video_length: int) -> int:
    """The reference's default temporal interpolation scale for a ``video_length``-frame table."""
    scale = (video_length - 1) // 16 if video_length % 2 == 1 else video_length // 16
    return max(scale, 1)


@dataclass(frozen=True)
class OpenSoraPlanConfig(LatteConfig):
    """Latte's fields with Open-Sora-Plan v1.1's defaults (65x512x512: 17 latent frames)."""

    video_length: int = 17
    interpolation_scale_1d: float | None = None

    @property
    def temporal_scale(self) -> float:
        """Positions of the temporal table are ``arange(n) / temporal_scale``."""
        if self.interpolation_scale_1d is None:
            return float(temporal_interpolation_scale(self.video_length))
        return float(max(self.interpolation_scale_1d, 1))

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> OpenSoraPlanConfig:
        """Read a ``LatteT2V`` ``config.json``: ``sample_size`` may be ``[h, w]`` (square only); options
        this implementation lacks are refused by name; bookkeeping keys are ignored."""
        data = dict(data)
        unsupported = []
        if data.get("use_rope"):
            unsupported.append("use_rope: true")
        if data.get("compress_kv_factor", 1) not in (1, None):
            unsupported.append(f"compress_kv_factor: {data['compress_kv_factor']}")
        if data.get("patch_size_t", 1) not in (1, None):
            unsupported.append(f"patch_size_t: {data['patch_size_t']}")
        size = data.get("sample_size")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                unsupported.append(f"sample_size: {list(size)} (only square sample sizes)")
            else:
                data["sample_size"] = int(size[0])
        if unsupported:
            raise ValueError(f"Open-Sora-Plan config not supported: {', '.join(unsupported)}")
        names = {f.name for f in dataclasses.fields(cls)}
        ignored = sorted(k for k in data if k not in names)
        if ignored:
            logger.debug("%s: ignoring config keys %s", cls.__name__, ignored)
        return cls(**{k: v for k, v in data.items() if k in names})


class OpenSoraPlanTransformer3D(LatteTransformer3D):
    """Open-Sora-Plan v1.1 denoiser: ``forward(x [B, 4, F, H, W], t [B], text [B, L, 4096])``."""

    config_class: ClassVar[type] = OpenSoraPlanConfig
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = (UNUSED_CAPTION_BUFFER,)
    config: OpenSoraPlanConfig

    def _compute_temporal_pos_table(self, num_frames: int, device: torch.device) -> torch.Tensor:
        # float32 positions as the reference (torch.arange(n) / scale), then the float64 table
        positions = torch.arange(num_frames, device=device, dtype=torch.float32) / self.config.temporal_scale
        return get_1d_sincos_pos_embed(self.inner_dim, positions).float().unsqueeze(0)

    def adds_temporal_pos(self, block: int, num_frames: int) -> bool:
        """The reference adds the table before the first temporal block, whatever the frame count."""
        return block == 0
