"""Executors: how requests reach a pipeline (in-process; ranks of a parallel run through :mod:`.worker`)."""

from .executor import Executor, LocalExecutor
from .worker import PipelineSpec, run_rank

__all__ = ["Executor", "LocalExecutor", "PipelineSpec", "run_rank"]
