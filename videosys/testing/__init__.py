"""Test helpers: tiny random-initialised checkpoints in official layouts, written offline."""

from videosys.testing.tiny_latte import SMOKE_OVERLAY, smoke_overlay, write_smoke_checkpoint, write_tiny_latte
from videosys.testing.tokenizer import build_t5_tokenizer

__all__ = ["SMOKE_OVERLAY", "build_t5_tokenizer", "smoke_overlay", "write_smoke_checkpoint", "write_tiny_latte"]
