"""The sequence-parallel all-to-all on gloo ranks: every pair of scattered and gathered dimensions (the
leading one included, whose pieces skip the copies around the collective), sizes that need padding, the
round trip back to the input, and the bytes it counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videosys.kernels.float8 import FLOAT8_DTYPE, Float8Rows
from videosys.parallel import ParallelConfig, ParallelState, comm
from videosys.parallel.launch import run_local

SHAPE = (5, 4, 3)  # 5 and 4 do not divide among 3 ranks


def rank_input(rank: int) -> torch.Tensor:
    return torch.arange(torch.Size(SHAPE).numel(), dtype=torch.float32).reshape(SHAPE) + 1000 * rank


def expected(rank: int, world: int, scatter_dim: int, gather_dim: int, gather_size: int) -> torch.Tensor:
    """What rank ``rank`` receives, from the definition: chunk ``rank`` of every rank's padded input, joined
    along ``gather_dim`` in rank order, that dimension cut to ``gather_size``."""
    pieces = []
    for src in range(world):
        x = rank_input(src)
        extra = (-x.shape[scatter_dim]) % world
        pad = [0, 0] * (x.ndim - scatter_dim - 1) + [0, extra]
        pieces.append(F.pad(x, pad).chunk(world, dim=scatter_dim)[rank])
    return torch.cat(pieces, dim=gather_dim).narrow(gather_dim, 0, gather_size)


def _ranks(rank: int, world: int, pairs: list[tuple[int, int]]) -> list:
    state = ParallelState.create(ParallelConfig(sp=world))
    out = []
    for scatter_dim, gather_dim in pairs:
        x = rank_input(rank)
        gather_size = x.shape[gather_dim] * world - 1  # the last rank's piece carries one padding row
        state.stats.reset()
        y = comm.all_to_all(x, state, scatter_dim, gather_dim, gather_size)
        back = comm.all_to_all(y, state, gather_dim, scatter_dim, x.shape[scatter_dim])
        out.append((y, back, state.stats.calls("all_to_all"), state.stats.bytes("all_to_all"), gather_size))
    return out


def test_all_to_all_matches_its_definition_and_inverts() -> None:
    world = 3
    pairs = [(0, 1), (1, 0), (1, 2), (2, 0)]
    per_rank = run_local(_ranks, world, pairs, timeout_s=120)
    for rank, results in enumerate(per_rank):
        x = rank_input(rank)
        for (scatter_dim, gather_dim), (y, back, calls, nbytes, gather_size) in zip(pairs, results):
            where = f"rank {rank}, scatter {scatter_dim}, gather {gather_dim}"
            assert torch.equal(y, expected(rank, world, scatter_dim, gather_dim, gather_size)), where
            # the round trip returns the input, but for the padding row the last rank got in place of its last
            kept = x.shape[gather_dim] - (rank == world - 1)
            assert back.shape == x.shape, where
            assert torch.equal(back.narrow(gather_dim, 0, kept), x.narrow(gather_dim, 0, kept)), where
            # bytes: the padded chunks sent to the other ranks, there and back
            there = -(-x.shape[scatter_dim] // world) * (x.numel() // x.shape[scatter_dim])
            back_total = y.numel() // y.shape[gather_dim] * x.shape[gather_dim] * world
            assert calls == 2, where
            assert nbytes == (world - 1) * (there + back_total // world) * 4, where


def rank_rows(rank: int) -> Float8Rows:
    """Float8 rows ``[5, 4, 8]`` (a scale per row) that differ per rank."""
    g = torch.Generator().manual_seed(rank)
    values = (torch.randn(5, 4, 8, generator=g) * 100).to(FLOAT8_DTYPE)
    scale = torch.rand(20, 1, generator=g) + 0.5
    return Float8Rows(values, scale, torch.float32)


def _rows_ranks(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    state = ParallelState.create(ParallelConfig(sp=world))

    def move(t: torch.Tensor) -> torch.Tensor:
        return comm.all_to_all(t, state, scatter_dim=0, gather_dim=1, gather_size=4 * world - 1)

    rows = rank_rows(rank)
    moved = rows.moved(move)
    assert moved.values.dtype == FLOAT8_DTYPE and moved.values.is_contiguous()
    return moved.dequantize(), move(rows.dequantize())


def test_float8_rows_move_with_their_scales() -> None:
    """Float8 rows through the all-to-all (values as bytes, scales alongside) dequantize to what the
    dequantized rows become through it: no row meets another row's scale."""
    for rank, (moved, want) in enumerate(run_local(_rows_ranks, 3, timeout_s=120)):
        assert moved.shape == want.shape == (2, 11, 8), rank
        assert torch.equal(moved, want), rank
