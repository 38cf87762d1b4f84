"""The multi-rank executor: a pool of Ray actors, one per GPU (or one CPU process each with gloo), cut into
request groups by a :class:`PoolLayout`. Requests go to idle groups as they free up; results (uint8 frames)
come back through Ray's object store in request order. The driver never holds model weights.

Every wait is bounded by ``timeout_s``. A rank that dies or does not answer in time raises
:class:`~videosys.errors.WorkerError` naming the rank; the pool is then torn down and rebuilt by the next
request. :meth:`RayExecutor.shutdown` (and an interrupted run) kills every actor, and stops Ray if this
executor started it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..errors import WorkerError
from ..parallel import ParallelConfigError
from ..request import GenerationRequest
from ..result import GenerationResult
from .executor import Executor
from .pool_layout import PoolLayout
from .rank_actor import RankActor
from .worker import PipelineSpec

logger = logging.getLogger(__name__)

PLACEMENTS = {"pack": "PACK", "spread": "SPREAD", "strict_pack": "STRICT_PACK", "strict_spread": "STRICT_SPREAD"}


@dataclass
class _Pool:
    """The live actors of a pool and where they run."""

    actors: list[Any]
    placement_group: Any
    where: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _InFlight:
    index: int
    refs: list[Any]
    started: float


class RayExecutor(Executor):
    """``layout.world_size`` ranks on a local Ray instance (started here) or a cluster (``address`` ``"auto"`` or
    ``"ray://host:port"`` / ``"host:port"``). ``placement`` packs ranks on as few nodes as possible ("pack", the
    default), or "spread"s them. ``device`` is "cuda" (one GPU per rank, NCCL) or "cpu" (gloo)."""

    def __init__(self, spec: PipelineSpec, layout: PoolLayout, address: str | None = None,
                 placement: str = "pack", timeout_s: float = 1800.0) -> None:
        if spec.device not in ("cpu", "cuda"):
            raise ParallelConfigError(f"device: {spec.device!r} not allowed for a worker pool (allowed: cpu, cuda: "
                                      f"each rank gets its own GPU)")
        if placement not in PLACEMENTS:
            raise ParallelConfigError(f"placement: {placement!r} not allowed (allowed: {', '.join(PLACEMENTS)})")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ParallelConfigError(f"timeout_s: {timeout_s!r} not allowed (allowed: a number of seconds > 0)")
        self.spec = spec
        self.layout = layout
        self.address = address
        self.placement = placement
        self.timeout_s = float(timeout_s)
        self.concurrency = layout.groups
        self._pool: _Pool | None = None
        self._owns_ray = False
        self._check_local_resources()

    # -- resources ---------------------------------------------------------------------------------------
    @property
    def _resource(self) -> str:
        return "GPU" if self.spec.device == "cuda" else "CPU"

    def _check_local_resources(self) -> None:
        """Without a cluster address the ranks run on this machine: refuse a pool it cannot hold now."""
        if self.address is not None:
            return
        n = self.layout.world_size
        if self.spec.device == "cuda":
            import torch

            have = torch.cuda.device_count()
        else:
            have = os.cpu_count() or 1
        if n > have:
            raise ParallelConfigError(
                f"world_size: {n} ranks need {n} {self._resource}s but this machine has {have} "
                f"(pass a Ray cluster address to use more machines, or fewer ranks)")

    def _start_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
            self._owns_ray = self.address is None
        have = ray.cluster_resources().get(self._resource, 0)
        if have < self.layout.world_size:
            self._stop_ray()
            raise ParallelConfigError(
                f"world_size: {self.layout.world_size} ranks need {self.layout.world_size} {self._resource}s "
                f"but the Ray cluster has {have:g}")

    def _stop_ray(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    # -- the pool ----------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._pool is not None

    def start(self) -> None:
        """Reserve the devices, start one actor per rank, rendezvous each group and build its pipelines."""
        if self._pool is not None:
            return
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._start_ray()
        n, gpu = self.layout.world_size, self.spec.device == "cuda"
        bundles = [{"CPU": 1, "GPU": 1} if gpu else {"CPU": 1} for _ in range(n)]
        pg = placement_group(bundles, strategy=PLACEMENTS[self.placement])
        pool = _Pool(actors=[], placement_group=pg)
        self._pool = pool
        try:
            if not pg.wait(timeout_seconds=self.timeout_s):
                raise WorkerError(f"worker pool: could not reserve {n} {self._resource}s ({self.placement}) within "
                                  f"{self.timeout_s:.0f} s; cluster has {ray.cluster_resources()}")
            remote_cls = ray.remote(RankActor)
            for rank in range(n):
                options = {"num_cpus": 1, "num_gpus": 1 if gpu else 0,
                           "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)}
                pool.actors.append(remote_cls.options(**options).remote(
                    self.spec, self.layout.parallel, rank, rank % self.layout.group_size, self.timeout_s))
            pool.where = self._wait([a.where.remote() for a in pool.actors], "start")
            setups = []
            for g in range(self.layout.groups):
                ranks = self.layout.group_ranks(g)
                master = pool.where[ranks[0]]
                setups += [pool.actors[r].setup.remote(master["ip"], master["port"]) for r in ranks]
            self._wait(setups, "set up (rendezvous and pipeline load)")
            logger.info("worker pool up: %s on %s", self.layout.describe(),
                        sorted({w["ip"] for w in pool.where}))
        except BaseException:
            self._teardown()
            raise

    def _wait(self, refs: list[Any], stage: str) -> list[Any]:
        """The values of ``refs`` (one per rank, in rank order), or a WorkerError naming the first bad rank."""
        import ray

        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        for rank, ref in enumerate(refs):
            if ref in ready:
                self._get(ref, rank, stage)
        if pending:
            missing = [r for r, ref in enumerate(refs) if ref in pending]
            raise WorkerError(f"worker pool: rank(s) {missing} did not {stage} within {self.timeout_s:.0f} s",
                              rank=missing[0])
        return [ray.get(ref) for ref in refs]

    def _get(self, ref: Any, rank: int, stage: str) -> Any:
        """One rank's value; an actor that died becomes a WorkerError; a failure inside it is re-raised as
        the original exception when it is a user error (bad request), else a WorkerError naming the rank."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except RayActorError as exc:
            raise WorkerError(f"worker pool: rank {rank}{self._node(rank)} died during {stage}: "
                              f"{_first_line(exc)}", rank=rank) from None
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if isinstance(cause, ValueError):  # VideoSysError and ParallelConfigError: the request's fault
                raise cause from None
            what = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(exc)
            raise WorkerError(f"worker pool: rank {rank}{self._node(rank)} failed during {stage}: {what}",
                              rank=rank) from None

    def _node(self, rank: int) -> str:
        pool = self._pool
        if pool is None or rank >= len(pool.where):
            return ""
        w = pool.where[rank]
        return f" (node {w['ip']}, pid {w['pid']})"

    def worker_pids(self) -> list[int]:
        """Process id of every rank (local pools: for monitoring and tests)."""
        return [w["pid"] for w in self._pool.where] if self._pool else []

    # -- requests ----------------------------------------------------------------------------------------
    def run(self, requests: Sequence[GenerationRequest], progress: bool = True,
            return_exceptions: bool = False) -> list[GenerationResult | Exception]:
        requests = list(requests)
        self.start()
        try:
            if not return_exceptions:  # a request the checkpoint cannot serve fails before any work
                self._wait([self._pool.actors[0].check.remote(requests)], "check the requests")
            return self._serve(requests, progress, return_exceptions)
        except ValueError:  # a bad request: the pool is fine
            raise
        except BaseException:  # a WorkerError, Ctrl-C, anything else: leave no rank behind
            self._teardown()
            raise

    def _serve(self, requests: list[GenerationRequest], progress: bool,
               return_exceptions: bool) -> list[GenerationResult | Exception]:
        import ray

        results: list[GenerationResult | Exception | None] = [None] * len(requests)
        pending = deque(range(len(requests)))
        in_flight: dict[int, _InFlight] = {}
        with tqdm(total=len(requests), desc="requests", disable=not progress or len(requests) < 2) as bar:
            while pending or in_flight:
                for g in range(self.layout.groups):
                    if g not in in_flight and pending:
                        i = pending.popleft()
                        refs = [self._pool.actors[r].generate.remote(requests[i]) for r in self.layout.group_ranks(g)]
                        in_flight[g] = _InFlight(i, refs, time.monotonic())
                ray.wait([ref for f in in_flight.values() for ref in f.refs], num_returns=1, timeout=1.0)
                for g, flight in list(in_flight.items()):
                    try:
                        outcome = self._poll(g, flight, return_exceptions)
                    except WorkerError as exc:
                        if not return_exceptions:
                            raise
                        # the requests in flight fail with the pool; a fresh pool serves the rest
                        logger.warning("%s; restarting the pool", exc)
                        for other in in_flight.values():
                            results[other.index] = exc
                        bar.update(len(in_flight))
                        in_flight.clear()
                        self._teardown()
                        self.start()
                        break
                    if outcome is not _PENDING:
                        results[flight.index] = outcome
                        del in_flight[g]
                        bar.update(1)
        return results  # type: ignore[return-value]

    def _poll(self, group: int, flight: _InFlight, return_exceptions: bool) -> Any:
        """A group's result, ``_PENDING``, or (with ``return_exceptions``) the request's own error. A rank
        that died fails at once; one that does not answer fails when the request's time is up."""
        import ray

        ranks = self.layout.group_ranks(group)
        ready, _ = ray.wait(flight.refs, num_returns=len(flight.refs), timeout=0)
        ready_set = set(ready)
        request_error: ValueError | None = None
        for rank, ref in zip(ranks, flight.refs):
            if ref in ready_set:
                try:
                    self._get(ref, rank, f"request {flight.index}")
                except ValueError as exc:  # the request's fault; every rank of the group sees it the same way
                    request_error = request_error or exc
        if len(ready) < len(flight.refs):
            if time.monotonic() - flight.started > self.timeout_s:
                missing = [r for r, ref in zip(ranks, flight.refs) if ref not in ready_set]
                raise WorkerError(f"worker pool: rank(s) {missing}{self._node(missing[0])} gave no answer to request "
                                  f"{flight.index} within {self.timeout_s:.0f} s (hung collective or stalled device)",
                                  rank=missing[0])
            return _PENDING
        if request_error is not None:
            if not return_exceptions:
                raise request_error
            return request_error
        return ray.get(flight.refs[0])

    # -- teardown ----------------------------------------------------------------------------------------
    def _teardown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in pool.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - best effort: the actor may already be gone
                logger.debug("kill actor: %s", exc)
        try:
            remove_placement_group(pool.placement_group)
        except Exception as exc:  # noqa: BLE001 - best effort during teardown
            logger.debug("remove placement group: %s", exc)

    def shutdown(self) -> None:
        """Kill every rank and, if this executor started Ray, stop it; safe to call more than once."""
        try:
            self._teardown()
        finally:
            self._stop_ray()


class _Pending:
    def __repr__(self) -> str:
        return "<pending>"


_PENDING = _Pending()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
