"""Loading a diffusers scheduler folder once and handing out fresh instances per request."""

from __future__ import annotations

import json
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

    def new(self) -> Any:
        import diffusers

        return getattr(diffusers, self.class_name).from_config(self.config)
