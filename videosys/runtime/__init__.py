"""Executors: how requests reach a pipeline: in this process (:class:`LocalExecutor`) or on a Ray worker pool of
ranks (:class:`RayExecutor`); what each rank runs is in :mod:`.worker` and :mod:`.rank_actor`."""

from .executor import Executor, LocalExecutor
from .pool_layout import PoolLayout
from .ray_executor import RayExecutor
from .worker import PipelineSpec, run_rank

__all__ = ["Executor", "LocalExecutor", "PipelineSpec", "PoolLayout", "RayExecutor", "run_rank"]
