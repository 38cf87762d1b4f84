"""Loading a diffusers scheduler folder (or a checkpoint's fixed defaults) once and handing out fresh
instances per request."""

from __future__ import annotations

import inspect
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import WeightsNotFoundError

CONFIG_NAME = "scheduler_config.json"


class DiffusersSchedulerFactory:
    """Reads ``scheduler/scheduler_config.json`` and builds the named diffusers scheduler on demand."""

    def __init__(self, config: dict[str, Any], class_name: str) -> None:
        self.config = dict(config)
        self.class_name = class_name

    @classmethod
    def from_folder(cls, folder: Path, expected: str) -> "DiffusersSchedulerFactory":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise WeightsNotFoundError(f"weights: {str(path)!r} is missing (the scheduler config of the checkpoint)")
        config = json.loads(path.read_text(encoding="utf-8"))
        name = config.get("_class_name", expected)
        if name != expected:
            raise WeightsNotFoundError(f"weights: {str(path)!r} names scheduler {name!r}; this pipeline samples with {expected}")
        return cls(config, expected)

    @classmethod
    def from_defaults(cls, class_name: str, config: dict[str, Any] | None = None) -> "DiffusersSchedulerFactory":
        """A checkpoint without a ``scheduler/`` folder: the diffusers class with its defaults (plus ``config``)."""
        import diffusers

        if not hasattr(diffusers, class_name):
            raise ValueError(f"diffusers has no scheduler class {class_name!r}")
        return cls(dict(config or {}), class_name)

    @cached_property
    def step_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``step`` call gets: deterministic DDIM (``eta=0``) where ``step`` takes it."""
        import diffusers

        params = inspect.signature(getattr(diffusers, self.class_name).step).parameters
        return {"eta": 0.0} if "eta" in params else {}

    def new(self) -> Any:
        import diffusers

        return getattr(diffusers, self.class_name).from_config(self.config)
