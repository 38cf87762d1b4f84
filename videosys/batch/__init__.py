"""Batch generation from a YAML config: many prompts, checked before any work, resumable from a manifest.

``run_batch(path)`` is the whole job; ``videosys batch CONFIG.yaml [key=value ...]`` its command line.
The config schema is in :mod:`videosys.batch.schema` and docs/configuration.md ("Batch config").
"""

from .errors import BatchConfigError
from .loading import load_batch_config
from .manifest import Manifest, ManifestBusyError
from .plan import BatchItem, item_seed
from .prompts import PromptSpec, read_prompts
from .runner import (
    BatchInterrupted,
    BatchSummary,
    PreparedBatch,
    execute_batch,
    prepare_batch,
    run_batch,
)
from .schema import BatchConfig, PromptEntry

__all__ = [
    "BatchConfig",
    "BatchConfigError",
    "BatchInterrupted",
    "BatchItem",
    "BatchSummary",
    "Manifest",
    "ManifestBusyError",
    "PreparedBatch",
    "PromptEntry",
    "PromptSpec",
    "execute_batch",
    "item_seed",
    "load_batch_config",
    "prepare_batch",
    "read_prompts",
    "run_batch",
]
