"""A request's denoiser calls replayed from CUDA graphs where the host, not the GPU, sets the pace.

An eager denoiser call launches about a thousand kernels from Python: on an H200 a float8 Open-Sora call
takes the host ~100 ms to issue whatever its size. At 480p the GPU needs ~170 ms, so the host stays ahead
and a graph gains nothing (its capture costs more than its replays save); at 240p the GPU needs ~48 ms and
waits on the host for the rest (docs/benchmarks.md, thirteenth session). :class:`GraphedDenoiser` wraps one
request's denoiser call and decides from the request's own calls:

* calls 1 and 2 run eagerly (the first compiles the Triton kernels and picks the cuDNN / cuBLAS plans; the
  second is timed on the host and, by two CUDA events, on the GPU);
* at call 3 the graphs go on where the GPU had already finished call 2 when the host came to call 3 and
  the host took at least :data:`HOST_SHARE` of the GPU's time to issue it: the GPU waited on the host.
  Otherwise every call stays eager (no host sync either way: the events are only queried).

With graphs on, a call's work is named by its PAB signature (:meth:`videosys.pab.PABRun.call_signature`:
this and the next call's plan flags and the outputs kept now; PAB off has one): the first call of a
signature runs eagerly, the second is captured, and later ones copy their inputs into the captured call's
buffers and replay it, the PAB run counting what the capture recorded. PAB's kept outputs then live in
fixed buffers that keeps overwrite in place (:meth:`~videosys.pab.PABRun.use_fixed_slots`), so each graph
reads and writes them where its capture did. The graphs of a request share one memory pool: nothing a graph
makes outlives its replay (its output is copied out at once; the kept buffers are made eagerly).

It applies (:func:`graphs_apply`) on a CUDA device, one rank (no collectives), without ``torch.compile``
and without a PAB observer (which watches every computed output from Python). The numbers are the eager
calls': the same kernels on the same inputs. Where a capture fails the request goes on eagerly, with a
warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ..pab import PABRun
from ..pab.run import CallEffects

logger = logging.getLogger(__name__)

__all__ = ["HOST_SHARE", "GraphedDenoiser", "HostBoundProbe", "capture_graph", "graphs_apply", "replayed_calls"]

#: The share of the GPU's time for a call that issuing it must take the host for graphs to go on (the
#: GPU also has to be idle when the next call starts). A float8 Open-Sora call on an H200: 0.61 at 480p
#: (GPU-bound: graphs cost 0.7%), ~1.0 at 360p and 240p (graphs gain 4% and 2.1x).
HOST_SHARE = 0.8


def graphs_apply(device: torch.device, world_size: int, compiled: bool, run: PABRun) -> bool:
    """Whether a request's denoiser calls may be replayed from CUDA graphs (see the module docstring)."""
    return device.type == "cuda" and world_size == 1 and not compiled and run.observer is None


def replayed_calls(denoiser: object) -> int:
    """How many of a request's denoiser calls ``denoiser`` (what :meth:`Pipeline.denoiser_calls` returned)
    replayed from CUDA graphs (0 for an unwrapped call)."""
    return denoiser.replays if isinstance(denoiser, GraphedDenoiser) else 0


def capture_graph(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                  pool: Any = None) -> tuple[Any, torch.Tensor]:
    """``fn(*inputs)`` captured in a new CUDA graph in memory pool ``pool`` (its Python runs once, its
    kernels not) and the graph's output buffer."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = fn(*inputs)
    return graph, output


class HostBoundProbe:
    """Times one eager call on the host and, between two CUDA events, on the GPU; :meth:`host_bound` asks
    afterwards, without waiting, whether the GPU waited on the host."""

    def __init__(self) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._began = 0.0
        self.host_ms = float("nan")

    def begin(self) -> None:
        self._start.record()
        self._began = time.perf_counter()

    def end(self) -> None:
        self.host_ms = (time.perf_counter() - self._began) * 1e3
        self._end.record()

    def host_bound(self) -> bool:
        if not self._end.query():  # the GPU is still on the call: the host is ahead of it
            return False
        return self.host_ms >= HOST_SHARE * self._start.elapsed_time(self._end)


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph, or anything with replay() (tests)
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    effects: CallEffects


class GraphedDenoiser:
    """``fn(*inputs)`` (tensors in, one tensor out; everything else bound in ``fn``, the PAB run included)
    replayed from CUDA graphs where the host sets the pace (see the module docstring). A replayed call
    returns a copy of the graph's output buffer (latent-sized), which a scheduler may keep across steps.

    ``run``: the request's PAB run, whose bookkeeping a replay repeats."""

    #: the eager call timed to decide (calls before it warm up)
    PROBE_CALL = 2

    def __init__(self, fn: Callable[..., torch.Tensor], run: PABRun) -> None:
        self.fn = fn
        self.run = run
        self.failed = False
        #: whether the GPU waited on the host (decided at call ``PROBE_CALL + 1``; ``None`` until then)
        self.host_bound: bool | None = None
        self._calls = 0
        self._probe: HostBoundProbe | None = None
        self._graphs: dict[Hashable, _Captured] = {}
        self._seen: set[Hashable] = set()
        self._pool: Any = None
        self.replays = 0

    @property
    def captured(self) -> int:
        """Graphs captured so far."""
        return len(self._graphs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        if self.host_bound is None:
            if self._calls < self.PROBE_CALL:
                return self.fn(*inputs)
            if self._calls == self.PROBE_CALL:
                return self._probed(inputs)
            self._decide()
        if not self.host_bound or self.failed:
            return self.fn(*inputs)
        key = self.run.call_signature()
        captured = self._graphs.get(key)
        if captured is not None:
            return self._replay(captured, inputs)
        if key in self._seen:  # its kept buffers exist now: the first call of the signature made them
            return self._capture(key, inputs)
        self._seen.add(key)
        return self.fn(*inputs)

    def _probed(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self._probe = HostBoundProbe()
        self._probe.begin()
        out = self.fn(*inputs)
        self._probe.end()
        return out

    def _decide(self) -> None:
        assert self._probe is not None
        self.host_bound = self._probe.host_bound()
        logger.info("denoiser calls %s: the host took %.1f ms to issue call %d (%s)",
                    "replayed from CUDA graphs" if self.host_bound else "eager", self._probe.host_ms,
                    self.PROBE_CALL, "the GPU waited on it" if self.host_bound else "the GPU set the pace")
        if self.host_bound:
            self.run.use_fixed_slots()

    def _capture(self, key: Hashable, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        before = self.run.snapshot()
        static = tuple(x.clone() for x in inputs)
        if self._pool is None and torch.cuda.is_available():
            self._pool = torch.cuda.graph_pool_handle()
        try:
            graph, output = capture_graph(self.fn, static, self._pool)
        except RuntimeError as exc:  # an op that cannot be captured (torch raises RuntimeError): go on eagerly
            logger.warning("CUDA graph capture of the denoiser call failed (%s: %s); the request runs eagerly",
                           type(exc).__name__, exc)
            self.failed = True
            self.run.restore_snapshot(before)
            return self.fn(*inputs)
        # the capture ran the call's Python (and its PAB bookkeeping) once but none of its kernels
        self._graphs[key] = _Captured(graph, static, output, self.run.effects_since(before))
        graph.replay()
        self.replays += 1
        logger.debug("denoiser call %d captured in a CUDA graph (%d so far)", self._calls, len(self._graphs))
        return output.clone()

    def _replay(self, captured: _Captured, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(inputs) != len(captured.inputs):
            raise ValueError(f"a graphed denoiser call takes {len(captured.inputs)} tensors, got {len(inputs)}")
        for buffer, x in zip(captured.inputs, inputs):
            if x.shape != buffer.shape or x.dtype != buffer.dtype:
                raise ValueError(f"a graphed denoiser call's inputs keep their shapes and dtypes: got "
                                 f"{list(x.shape)} {x.dtype} for {list(buffer.shape)} {buffer.dtype}")
            buffer.copy_(x)
        captured.graph.replay()
        self.replays += 1
        self.run.apply_effects(captured.effects)
        return captured.output.clone()
