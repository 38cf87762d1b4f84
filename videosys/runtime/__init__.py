"""Executors: how requests reach a pipeline (in-process now; a Ray pool of ranks later)."""

from .executor import Executor, LocalExecutor

__all__ = ["Executor", "LocalExecutor"]
