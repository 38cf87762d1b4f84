"""Pyramid Attention Broadcast: config (pure data) -> scheduler (the rule) -> run (per-request state)."""

from .config import (
    ALL_KINDS,
    ATTENTION_KINDS,
    AttentionBroadcast,
    MLPBroadcast,
    PABConfig,
    PABConfigError,
    PABPresets,
    resolve_pab,
    with_cache_format,
)
from .run import PABObserver, PABRun, PABStats, run_module, run_residual
from .scheduler import PABPlan, PABScheduler

__all__ = [
    "ALL_KINDS",
    "ATTENTION_KINDS",
    "AttentionBroadcast",
    "MLPBroadcast",
    "PABConfig",
    "PABConfigError",
    "PABObserver",
    "PABPlan",
    "PABPresets",
    "PABRun",
    "PABScheduler",
    "PABStats",
    "resolve_pab",
    "run_module",
    "run_residual",
    "with_cache_format",
]
