"""The executor interface between the engine and the pipelines."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from ..pipelines.base import Pipeline
from ..request import GenerationRequest
from ..result import GenerationResult

logger = logging.getLogger(__name__)


class Executor(ABC):
    """Runs validated requests and returns their results in request order.

    With ``return_exceptions`` a request that fails leaves its exception in its place and the others still run
    (batch jobs record it and go on); without, the first failure is raised.
    """

    #: how many requests run at the same time (data-parallel groups); callers may submit this many at once
    concurrency: int = 1

    @abstractmethod
    def run(self, requests: Sequence[GenerationRequest], progress: bool = True,
            return_exceptions: bool = False) -> list[GenerationResult | Exception]: ...

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

    def run(self, requests: Sequence[GenerationRequest], progress: bool = True,
            return_exceptions: bool = False) -> list[GenerationResult | Exception]:
        pipeline = self.pipeline
        if not return_exceptions:
            for request in requests:  # a request the checkpoint cannot serve fails before any work
                pipeline.check(request)
            return [pipeline.generate(request, progress=progress) for request in requests]
        results: list[GenerationResult | Exception] = []
        for request in requests:
            try:
                pipeline.check(request)
                results.append(pipeline.generate(request, progress=progress))
            except Exception as exc:  # noqa: BLE001 - handed back in the request's place, by contract
                logger.warning("request %r failed: %s: %s", request.prompt, type(exc).__name__, exc)
                results.append(exc)
        return results

    def shutdown(self) -> None:
        self._pipeline = None
