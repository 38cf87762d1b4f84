"""Hand-written GPU kernels (Triton) for work that neither torch's kernels nor Inductor do well, each behind a
check that says when it applies; callers keep their torch path for everything else (the CPU, no Triton,
shapes a kernel does not take).

* :func:`fused_temporal_attention`: a DiT's attention over frames (``T`` <= 64) read straight from the
  frame-major ``qkv`` projection, with the optional RMS qk-norm and RoPE in the same pass (STDiT3's temporal
  blocks; Latte's and Open-Sora-Plan's temporal blocks, as any unmasked self-attention over at most 64
  tokens).
* :mod:`videosys.kernels.modulation`: a block's layer norm + adaLN modulation, and its gate (+ residual),
  one pass each (eager mode: both models' blocks through :mod:`videosys.models.layers.norms`).
* :mod:`videosys.kernels.rms_norm`: RMS norm over rows of at most 128 channels (STDiT3's qk-norm).
* :mod:`videosys.kernels.folded_attention`: the scale, bias row and per-head softmax of a cross-attention
  folded into its projections (:mod:`videosys.models.layers.folded_attention`), in place between its GEMMs.

The modules that can use a kernel hold a boolean ``fused_kernel`` attribute (default ``True``);
:func:`use_fused_kernels` sets it on every module of a model (``False``: the torch path everywhere, e.g.
for an A/B measurement: ``scripts/profile_denoise.py --no-fused``).
"""

from __future__ import annotations

from torch import nn

from videosys.kernels.common import triton_available
from videosys.kernels.temporal_attention import (
    MAX_FRAMES,
    fused_temporal_attention,
    fused_temporal_attention_applies,
    temporal_attention_reference,
)

__all__ = [
    "MAX_FRAMES",
    "fused_temporal_attention",
    "fused_temporal_attention_applies",
    "temporal_attention_reference",
    "triton_available",
    "use_fused_kernels",
]


def use_fused_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Let every module of ``model`` that can run a fused kernel use it where it applies (``enabled``), or
    keep them all on the torch path. Returns the number of such modules."""
    modules = [m for m in model.modules() if hasattr(m, "fused_kernel")]
    for module in modules:
        module.fused_kernel = bool(enabled)
    return len(modules)
