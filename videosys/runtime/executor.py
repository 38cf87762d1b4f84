"""The executor interface between the engine and the pipelines."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Callable, Sequence

from ..pipelines.base import Pipeline
from ..request import GenerationRequest
from ..result import GenerationResult

logger = logging.getLogger(__name__)


class Executor(ABC):
    """Runs validated requests and returns their results in request order."""

    @abstractmethod
    def run(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[GenerationResult]: ...

    @abstractmethod
    def shutdown(self) -> None: ...


class LocalExecutor(Executor):
    """One pipeline in this process on one device, built on first use and kept."""

    def __init__(self, build: Callable[[], Pipeline]) -> None:
        self._build = build
        self._pipeline: Pipeline | None = None

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = self._build()
        return self._pipeline

    def run(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[GenerationResult]:
        pipeline = self.pipeline
        for request in requests:  # a request the checkpoint cannot serve fails before any work
            pipeline.check(request)
        return [pipeline.generate(request, progress=progress) for request in requests]

    def shutdown(self) -> None:
        self._pipeline = None
