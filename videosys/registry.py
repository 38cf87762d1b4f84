"""The model registry: a model name maps to its pipeline class and its default YAML. Adding a model is one
``register`` call (see :func:`default_registry`). Registries are ordinary objects: no process-global state."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig, project_root
from .errors import UnknownModelError

if TYPE_CHECKING:
    from .pipelines.base import Pipeline


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. ``pipeline`` is ``"module:Class"``, imported only when the model is used."""

    name: str
    pipeline: str
    config_path: Path
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def load_config(self) -> ModelConfig:
        return ModelConfig.from_yaml(self.config_path)

    def pipeline_class(self) -> type["Pipeline"]:
        module_name, _, class_name = self.pipeline.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


class ModelRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}

    def register(self, spec: ModelSpec) -> None:
        for key in (spec.name, *spec.aliases):
            if key in self._specs or key in self._aliases:
                raise ValueError(f"model name {key!r} is already registered")
        self._specs[spec.name] = spec
        for alias in spec.aliases:
            self._aliases[alias] = spec.name

    def get(self, name: str) -> ModelSpec:
        key = name.lower() if isinstance(name, str) else name
        key = self._aliases.get(key, key)
        if key not in self._specs:
            raise UnknownModelError(f"model: {name!r} is not registered (allowed: {', '.join(self.names())})")
        return self._specs[key]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs or name in self._aliases


def default_registry() -> ModelRegistry:
    """A new registry holding the built-in models."""
    configs = project_root() / "configs"
    registry = ModelRegistry()
    registry.register(
        ModelSpec(
            name="latte",
            pipeline="videosys.pipelines.latte:LattePipeline",
            config_path=configs / "latte.yaml",
            aliases=("latte-1", "latte1"),
        )
    )
    registry.register(
        ModelSpec(
            name="opensora",
            pipeline="videosys.pipelines.opensora:OpenSoraPipeline",
            config_path=configs / "opensora.yaml",
            aliases=("open-sora", "opensora-1.2", "opensora1.2", "open-sora-1.2"),
        )
    )
    registry.register(
        ModelSpec(
            name="opensora-plan",
            pipeline="videosys.pipelines.opensora_plan:OpenSoraPlanPipeline",
            config_path=configs / "opensora-plan.yaml",
            aliases=("open-sora-plan", "opensora-plan-1.1", "opensora-plan-v1.1", "osp"),
        )
    )
    return registry
