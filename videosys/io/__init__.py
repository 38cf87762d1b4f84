"""Input and output: checkpoint resolution and video files."""

from .checkpoint import resolve_checkpoint
from .video import save_video

__all__ = ["resolve_checkpoint", "save_video"]
