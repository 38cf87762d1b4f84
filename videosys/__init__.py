"""VideoSys: fast inference for text-to-video diffusion transformers with Pyramid Attention Broadcast.

Importing the package has no side effects; models load when an engine first generates.
"""

from .engine import VideoSysEngine
from .errors import ConfigError, RequestError, UnknownModelError, VideoSysError, WeightsNotFoundError
from .pab import PABConfig, PABScheduler
from .registry import ModelRegistry, ModelSpec, default_registry
from .request import GenerationRequest
from .result import GenerationResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GenerationRequest",
    "GenerationResult",
    "ModelRegistry",
    "ModelSpec",
    "PABConfig",
    "PABScheduler",
    "RequestError",
    "UnknownModelError",
    "VideoSysEngine",
    "VideoSysError",
    "WeightsNotFoundError",
    "default_registry",
]
