"""Benchmark helpers shared by the scripts in ``scripts/`` (GPU timing)."""

from .timing import cuda_timed

__all__ = ["cuda_timed"]
