"""Start ``world_size`` local processes joined in one ``torch.distributed`` group and run a function on each.

For tests, a laptop and the CLI's CPU runs (gloo); the worker pool starts its ranks through Ray instead.
``fn(rank, world_size, *args)`` must be a picklable top-level function; its return values come back in rank
order. A rank that raises fails the whole run with that rank's error; ``timeout`` bounds the wait.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any


class RankError(RuntimeError):
    """A rank of a local run failed or timed out; the message names the rank and carries its traceback."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, backend: str, fn: Callable[..., Any], args: tuple,
           queue: Any, timeout_s: float) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            # Pickled to plain bytes here: a queue would otherwise pass tensors as shared memory that vanishes
            # when this process exits, before the parent has read them.
            queue.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # report every failure to the parent, whatever it is
        queue.put((rank, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_local(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
              timeout_s: float = 300.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes; return the results by rank."""
    if world_size < 1:
        raise ValueError(f"world_size: {world_size} not allowed (allowed: an integer >= 1)")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, backend, fn, args, queue, timeout_s), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size:
            try:
                rank, ok, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                _check_alive(procs, results, deadline, timeout_s)
                continue
            if not ok:
                raise RankError(f"rank {rank} failed: {value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return [results[r] for r in range(world_size)]


def _check_alive(procs: list, results: dict[int, Any], deadline: float, timeout_s: float) -> None:
    """Raise if a rank that has not reported died (it can no longer report) or the time is up."""
    for rank, proc in enumerate(procs):
        if rank not in results and not proc.is_alive() and proc.exitcode not in (None, 0):
            raise RankError(f"rank {rank} died with exit code {proc.exitcode} before giving a result")
    if time.monotonic() > deadline:
        missing = sorted(set(range(len(procs))) - set(results))
        raise RankError(f"ranks {missing} gave no result within {timeout_s:.0f} s")
