"""Per-model pipelines: text encode -> denoise loop (scheduler + CFG + PAB) -> VAE decode."""

from .base import Pipeline

__all__ = ["Pipeline"]
