"""A request's denoiser call captured once in a CUDA graph and replayed for the rest of its steps.

An eager denoiser call launches about a thousand kernels from Python; where the host falls behind, the GPU
waits between them (on an H200 about 5 ms of an Open-Sora call's 182, and ~5 more between calls in the
sampling loop: docs/benchmarks.md, tenth session). A CUDA graph replays the same launches with one host
call. :class:`GraphedDenoiser` wraps one request's denoiser call: the first call runs eagerly (it compiles
the Triton kernels, picks the cuDNN and cuBLAS plans and warms the allocator), the second is captured
and replayed, every later one copies its inputs into the captured call's buffers and replays it.

It applies (:func:`graphs_apply`) where every call does the same work with the same shapes: a CUDA
device, one rank (no collectives), no ``torch.compile``, and a PAB run that broadcasts and keeps nothing
and has no observer (a PAB run decides per call in Python, which a replay would not repeat). The numbers
are the eager call's: the same kernels on the same inputs. Where a capture fails the request goes on
eagerly, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..pab import PABRun

logger = logging.getLogger(__name__)

__all__ = ["GraphedDenoiser", "capture_graph", "graphs_apply"]


def graphs_apply(device: torch.device, world_size: int, compiled: bool, run: PABRun) -> bool:
    """Whether a request's denoiser calls can be replayed from a CUDA graph (see the module docstring)."""
    return device.type == "cuda" and world_size == 1 and not compiled and run.repeats_one_call


def capture_graph(fn: Callable[..., torch.Tensor],
                  inputs: tuple[torch.Tensor, ...]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``fn(*inputs)`` captured in a new CUDA graph (its Python runs once, its kernels not) and the graph's
    output buffer."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn(*inputs)
    return graph, output


class GraphedDenoiser:
    """``fn(*inputs)`` (tensors in, one tensor out; everything else bound in ``fn``) run eagerly once, then
    captured and replayed. A replayed call returns a copy of the graph's output buffer (latent-sized, so
    the copy is small), which a scheduler may keep across steps.

    ``run``: the request's PAB run (:attr:`PABRun.repeats_one_call`), whose counters a replay keeps."""

    def __init__(self, fn: Callable[..., torch.Tensor], run: PABRun) -> None:
        self.fn = fn
        self.run = run
        self.graph: torch.cuda.CUDAGraph | None = None  # or anything with replay() (tests)
        self.failed = False
        self._calls = 0
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._output: torch.Tensor | None = None
        self._per_call: dict[str, int] = {}

    @property
    def replaying(self) -> bool:
        """Whether the calls now replay the captured graph."""
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        if self.graph is not None:
            return self._replay(inputs)
        if self.failed or self._calls == 1:
            return self.fn(*inputs)
        return self._capture(inputs)

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        before = dict(self.run.stats.computed)
        static = tuple(x.clone() for x in inputs)
        try:
            graph, output = capture_graph(self.fn, static)
        except RuntimeError as exc:  # an op that cannot be captured (torch raises RuntimeError): go on eagerly
            logger.warning("CUDA graph capture of the denoiser call failed (%s: %s); the request runs eagerly",
                           type(exc).__name__, exc)
            self.failed = True
            self.run.stats.computed.update(before)
            return self.fn(*inputs)
        # the capture ran the call's Python (and its PAB bookkeeping) once but none of its kernels
        self._per_call = {kind: self.run.stats.computed[kind] - n for kind, n in before.items()}
        self.graph, self._inputs, self._output = graph, static, output
        graph.replay()
        logger.info("denoiser call captured in a CUDA graph: the request's other calls replay it")
        return output.clone()

    def _replay(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(inputs) != len(self._inputs):
            raise ValueError(f"a graphed denoiser call takes {len(self._inputs)} tensors, got {len(inputs)}")
        for buffer, x in zip(self._inputs, inputs):
            if x.shape != buffer.shape or x.dtype != buffer.dtype:
                raise ValueError(f"a graphed denoiser call's inputs keep their shapes and dtypes: got "
                                 f"{list(x.shape)} {x.dtype} for {list(buffer.shape)} {buffer.dtype}")
            buffer.copy_(x)
        assert self.graph is not None and self._output is not None
        self.graph.replay()
        self.run.count_call(self._per_call)
        return self._output.clone()
