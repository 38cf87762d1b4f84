"""Collectives over a :class:`ParallelState`'s groups, with padding so that any size works on any number of
ranks (a dimension that does not divide is zero-padded, never rejected) and with per-request accounting.

Layout convention for a sharded dimension of true size ``n`` on ``P`` ranks: it is padded to
``P * ceil(n / P)`` and rank ``r`` holds rows ``[r * c, (r + 1) * c)`` with ``c = ceil(n / P)``; the last
ranks' rows past ``n`` are padding, dropped when the dimension is gathered again. Callers pass the true
size on every gather: no pad table is kept anywhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .state import ParallelState


def chunk_size(n: int, parts: int) -> int:
    """Rows per rank of an ``n``-row dimension split over ``parts`` ranks (after padding)."""
    return math.ceil(n / parts)


def pad_dim(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    """Zero-pad ``dim`` of ``x`` at the end up to a multiple of ``multiple``."""
    dim = dim % x.ndim
    extra = (-x.shape[dim]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.ndim - dim - 1) + [0, extra]
    return F.pad(x, pad)


def shard_range(n: int, state: ParallelState) -> tuple[int, int]:
    """``(start, stop)`` of the true rows of an ``n``-row dimension this SP rank holds (``stop - start`` may be
    smaller than the chunk, or 0, on the last ranks)."""
    c = chunk_size(n, state.sp_size)
    start = min(state.sp_rank * c, n)
    return start, min(start + c, n)


def shard(x: torch.Tensor, dim: int, state: ParallelState) -> torch.Tensor:
    """This SP rank's chunk of ``dim`` (padded layout; no communication)."""
    if not state.sp_enabled:
        return x
    padded = pad_dim(x, dim, state.sp_size)
    return padded.chunk(state.sp_size, dim=dim)[state.sp_rank].contiguous()


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def all_to_all(x: torch.Tensor, state: ParallelState, scatter_dim: int, gather_dim: int, gather_size: int) -> torch.Tensor:
    """Re-shard over the SP group: split ``scatter_dim`` (padded) across the ranks and concatenate the pieces
    they send along ``gather_dim``, dropping that dimension's padding (``gather_size`` = its true size).
    Cheapest with the leading dimension as one of the two: sent from (``scatter_dim=0``) or received into
    (``gather_dim=0``) without copying around the collective."""
    if not state.sp_enabled:
        return x
    return _sp_all_to_all(x, state, scatter_dim, gather_dim, gather_size)


# Outside torch.compile's graphs (videosys.models.compile): the collective and its byte counter would make
# Dynamo break the graph here anyway and guard on the counter's value (a recompile on every call).
@torch.compiler.disable
def _sp_all_to_all(x: torch.Tensor, state: ParallelState, scatter_dim: int, gather_dim: int,
                   gather_size: int) -> torch.Tensor:
    import torch.distributed as dist

    p = state.sp_size
    scatter_dim, gather_dim = scatter_dim % x.ndim, gather_dim % x.ndim
    # chunks of the leading dimension of a contiguous tensor are contiguous: sent without a copy
    inputs = [c.contiguous() for c in pad_dim(x, scatter_dim, p).chunk(p, dim=scatter_dim)]
    if gather_dim == 0:  # the pieces land in one buffer in rank order: no concatenation copy
        received = inputs[0].new_empty((p * inputs[0].shape[0], *inputs[0].shape[1:]))
        outputs = list(received.chunk(p))
    else:
        outputs = [torch.empty_like(inputs[0]) for _ in range(p)]
    dist.all_to_all(outputs, inputs, group=state.sp_group)
    state.stats.add("all_to_all", sum(_bytes(c) for i, c in enumerate(inputs) if i != state.sp_rank))
    if gather_dim == 0:
        return received.narrow(0, 0, gather_size)
    return torch.cat(outputs, dim=gather_dim).narrow(gather_dim, 0, gather_size)


def gather(x: torch.Tensor, state: ParallelState, dim: int, full_size: int) -> torch.Tensor:
    """All-gather the SP shards of ``dim`` and drop the padding (``full_size`` = the true size)."""
    if not state.sp_enabled:
        return x
    import torch.distributed as dist

    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.sp_size)]
    dist.all_gather(parts, x, group=state.sp_group)
    state.stats.add("all_gather", _bytes(x) * (state.sp_size - 1))
    return torch.cat(parts, dim=dim).narrow(dim, 0, full_size)


def cfg_all_gather(x: torch.Tensor, state: ParallelState) -> list[torch.Tensor]:
    """Both CFG branches' tensors, ``[branch 0, branch 1]``, on every rank of a CFG pair."""
    if not state.cfg_enabled:
        return [x]
    import torch.distributed as dist

    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.cfg_size)]
    dist.all_gather(parts, x, group=state.cfg_group)
    state.stats.add("cfg_all_gather", _bytes(x) * (state.cfg_size - 1))
    return parts


def broadcast_object(obj: Any, state: ParallelState, src: int = 0) -> Any:
    """A picklable object from world rank ``src`` to every rank (small metadata only)."""
    if state.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj if state.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=state.world_group)
    return box[0]


def gather_to_driver(pieces: list[torch.Tensor], state: ParallelState,
                     device: torch.device) -> list[list[torch.Tensor]] | None:
    """Every rank's list of tensors (shapes may differ between ranks) to world rank 0: ``out[rank][i]`` there,
    ``None`` elsewhere. For work split across ranks outside the denoiser (VAE decode pieces)."""
    if state.world_size == 1:
        return [pieces]
    import torch.distributed as dist

    metas: list[Any] = [None] * state.world_size
    dist.all_gather_object(metas, [(tuple(p.shape), p.dtype) for p in pieces], group=state.world_group)
    if not state.is_driver:
        for piece in pieces:
            buf = piece.to(device).contiguous()
            state.stats.add("gather_to_driver", _bytes(buf))
            dist.send(buf, dst=0)
        return None
    out: list[list[torch.Tensor]] = [list(pieces)]
    for src in range(1, state.world_size):
        received = []
        for shape, dtype in metas[src]:
            buf = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(buf, src=src)
            received.append(buf)
        out.append(received)
    return out


def broadcast_tensors(tensors: tuple[torch.Tensor | None, ...] | None, state: ParallelState,
                      device: torch.device, src: int = 0) -> tuple[torch.Tensor | None, ...]:
    """A tuple of tensors (entries may be ``None``) that only world rank ``src`` has, on every rank."""
    if state.world_size == 1:
        assert tensors is not None
        return tensors
    import torch.distributed as dist

    metas = broadcast_object(
        None if tensors is None else [None if t is None else (tuple(t.shape), t.dtype) for t in tensors], state, src
    )
    out: list[torch.Tensor | None] = []
    for i, meta in enumerate(metas):
        if meta is None:
            out.append(None)
            continue
        if state.rank == src:
            buf = tensors[i].to(device).contiguous()
            state.stats.add("broadcast", _bytes(buf) * (state.world_size - 1))
        else:
            buf = torch.empty(meta[0], dtype=meta[1], device=device)
        dist.broadcast(buf, src=src, group=state.world_group)
        out.append(buf)
    return tuple(out)


def sum_stats(state: ParallelState) -> dict[str, dict[str, int]]:
    """Every rank's :class:`CommStats` of this request, summed (the bytes all ranks moved); on every rank."""
    mine = state.stats.as_dict()
    if state.world_size == 1:
        return mine
    import torch.distributed as dist

    every: list[Any] = [None] * state.world_size
    dist.all_gather_object(every, mine, group=state.world_group)
    total: dict[str, dict[str, int]] = {}
    for stats in every:
        for kind, counts in stats.items():
            slot = total.setdefault(kind, {"calls": 0, "bytes": 0})
            slot["calls"] += counts["calls"]
            slot["bytes"] += counts["bytes"]
    return {k: total[k] for k in sorted(total, key=lambda k: (k == "total", k))}
