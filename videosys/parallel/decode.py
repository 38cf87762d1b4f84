"""Work split across every rank of a request outside the denoiser: the VAE decode.

The denoiser leaves the same latent on every rank; decoding it whole on each rank would repeat the same
work ``world_size`` times. Instead the decode is cut into independent *items* (Open-Sora's temporal clips,
the CausalVAE's tiles, Latte's frame chunks), the items are divided over all world ranks in contiguous
blocks (:func:`balanced_blocks`), every rank decodes its block and :func:`~videosys.parallel.comm.gather_to_driver`
brings the pieces to rank 0, which gets them back in item order (:func:`decode_split`) and assembles the
video. Whatever the layout (sequence or CFG parallel), every rank of the world takes part.

Every rank must call :func:`decode_split` with the same items (same count, same order, same costs): the
split is computed locally on each rank, and the gather is a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .comm import gather_to_driver
from .state import ParallelState

__all__ = ["balanced_blocks", "decode_split"]

T = TypeVar("T")


def balanced_blocks(count: int, parts: int, costs: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Contiguous blocks ``[(start, stop), ...]`` (one per part, in order, covering ``range(count)``) of
    ``count`` items over ``parts`` ranks.

    Without ``costs`` the blocks differ by at most one item, the first ``count % parts`` parts taking one
    more (so with fewer items than parts the first parts get one each and the others none). With
    ``costs`` (one non-negative number per item) block ``k`` ends at the item boundary whose cumulative
    cost is nearest to ``(k + 1) / parts`` of the total (ties: the later boundary), so each block's cost is
    within one item's cost of the ideal share; blocks may be empty.
    """
    if count < 0 or parts < 1:
        raise ValueError(f"balanced_blocks: count {count} and parts {parts} not allowed (count >= 0, parts >= 1)")
    if costs is None:
        base, extra = divmod(count, parts)
        bounds = [k * base + min(k, extra) for k in range(parts + 1)]
    else:
        if len(costs) != count:
            raise ValueError(f"balanced_blocks: {len(costs)} costs for {count} items")
        if any(not c >= 0 for c in costs):
            raise ValueError("balanced_blocks: costs must be non-negative numbers")
        prefix = [0.0]
        for c in costs:
            prefix.append(prefix[-1] + float(c))
        total = prefix[-1]
        bounds = [0]
        i = 0
        for k in range(1, parts):
            target = total * k / parts
            # prefix is non-decreasing and the targets increase, so the search resumes where it stopped.
            while i < count and abs(prefix[i + 1] - target) <= abs(prefix[i] - target):
                i += 1
            bounds.append(i)
        bounds.append(count)
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def decode_split(
    items: Sequence[T],
    decode_one: Callable[[T], torch.Tensor],
    state: ParallelState,
    device: torch.device,
    costs: Sequence[float] | None = None,
) -> list[torch.Tensor] | None:
    """Decode ``items`` split over the world ranks of ``state``; ``decode_one(item)`` on rank 0 for all.

    Rank ``r`` decodes block ``r`` of :func:`balanced_blocks` (``costs``: relative cost of each item; by
    count without), the outputs (any shapes) are gathered on rank 0 (received on ``device``), which returns
    ``[decode_one(item) for item in items]`` -- each computed on whichever rank owned the item. Other ranks
    return ``None``. With one rank the items are simply decoded in order. A rank whose block is empty
    decodes nothing but still takes part in the gather.

    Rank 0 ends up holding every output at once (plus what it decoded itself), so the items' outputs
    should add up to about the final result, not a multiple of it.
    """
    if state.world_size == 1:
        return [decode_one(item) for item in items]
    start, stop = balanced_blocks(len(items), state.world_size, costs)[state.rank]
    mine = [decode_one(items[i]) for i in range(start, stop)]
    gathered = gather_to_driver(mine, state, device)
    if gathered is None:
        return None
    outputs = [piece for rank_pieces in gathered for piece in rank_pieces]
    if len(outputs) != len(items):
        raise RuntimeError(
            f"decode_split: rank 0 has {len(items)} items but the ranks returned {len(outputs)} outputs; "
            "every rank must pass the same items"
        )
    return outputs
