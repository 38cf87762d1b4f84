"""Timing of GPU work: wall clock with a synchronise around every call (so queued kernels are counted), or CUDA
events for sub-millisecond kernels, where the host side of a synchronise would be a visible share."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def cuda_timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls (compilation, caches);
    without CUDA (a CPU dry run) the wall clock alone."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def cuda_event_median_ms(
    fn: Callable[[], object], repeats: int = 20, warmup: int = 3, calls_per_sample: int = 1
) -> float:
    """Median milliseconds per call of ``fn`` over ``repeats`` samples, each ``calls_per_sample`` back-to-back
    calls between two CUDA events, after ``warmup`` calls.

    With one call per sample the GPU waits between the start event and the kernel for as long as the host
    takes to launch it (20-50 us for a Triton kernel), which a ~0.1 ms kernel cannot hide; with many, the
    host queues ahead of the GPU as it does inside a model's forward, so the samples time the kernels
    (docs/benchmarks.md, ninth session: a norm kernel read 0.137 ms alone and 0.084 ms back to back)."""
    if calls_per_sample < 1:
        raise ValueError(f"calls_per_sample must be at least 1, got {calls_per_sample}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls_per_sample):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_sample)
    return statistics.median(times)
