"""VAE decode split across the ranks of a request (videosys.parallel.decode): balanced blocks, the generic
helper, and the Open-Sora VAE / CausalVAE decodes on 2 and 3 gloo ranks against the single-process decode."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from videosys.models.opensora.vae import OpenSoraVAE
from videosys.models.opensora_plan.causal_vae import CausalVAE
from videosys.parallel import ParallelConfig, ParallelState
from videosys.parallel.decode import balanced_blocks, decode_split
from videosys.parallel.launch import run_local
from videosys.testing.tiny_causal_vae import make_causal_vae
from videosys.testing.tiny_opensora_vae import make_opensora_vae

# Open-Sora: 5-frame clips (2 latent frames each); 23 frames = clips 5, 5, 5, 5, 3; 10 frames = 2 clips.
OS_MICRO_FRAMES = 5
OS_CASES = ((23, 9), (10, 4))  # (num_frames, latent frames)
# CausalVAE: 4-latent-pixel tiles (stride 3) and 3-frame chunks; 5 x 5 x 7 -> 2 chunks x 2 x 3 tiles = 12;
# 2 x 3 x 3 fits one tile (untiled: a single piece).
CV_SHAPES = ((5, 5, 7), (2, 3, 3))


def _latent(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(1, 4, frames, height, width, generator=torch.Generator().manual_seed(seed))


def _opensora() -> OpenSoraVAE:
    return make_opensora_vae(seed=0, micro_frame_size=OS_MICRO_FRAMES)


def _causal() -> CausalVAE:
    model = make_causal_vae(seed=0)
    model.tile_latent_min_size, model.tile_latent_min_size_t, model.tile_overlap_factor = 4, 3, 0.25
    return model


def _inputs() -> tuple[list[tuple[torch.Tensor, int]], list[torch.Tensor]]:
    os_inputs = [(_latent(t, 2, 3, seed=10 + k), n) for k, (n, t) in enumerate(OS_CASES)]
    cv_inputs = [_latent(*shape, seed=20 + k) for k, shape in enumerate(CV_SHAPES)]
    return os_inputs, cv_inputs


# -- balanced blocks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("count,parts", [(7, 3), (8, 3), (3, 3), (2, 3), (0, 2), (1, 1), (5, 4)])
def test_blocks_by_count(count: int, parts: int) -> None:
    blocks = balanced_blocks(count, parts)
    assert len(blocks) == parts and blocks[0][0] == 0 and blocks[-1][1] == count
    assert all(blocks[k][1] == blocks[k + 1][0] for k in range(parts - 1))
    sizes = [b - a for a, b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_blocks_by_cost() -> None:
    assert balanced_blocks(4, 2, [1, 1, 1, 10]) == [(0, 3), (3, 4)]
    assert balanced_blocks(4, 2, [10, 1, 1, 1]) == [(0, 1), (1, 4)]
    assert balanced_blocks(4, 2, [1, 1, 1, 1]) == [(0, 2), (2, 4)]
    assert balanced_blocks(2, 3, [1, 1]) == [(0, 1), (1, 1), (1, 2)]  # one rank idle
    assert balanced_blocks(3, 2, [0, 0, 0]) == [(0, 3), (3, 3)]
    costs = [3, 7, 2, 2, 9, 1, 4, 4, 6]
    for parts in (2, 3, 4):
        blocks = balanced_blocks(len(costs), parts, costs)
        assert blocks[0][0] == 0 and blocks[-1][1] == len(costs)
        for a, b in blocks:
            assert a <= b and abs(sum(costs[a:b]) - sum(costs) / parts) <= max(costs)
    with pytest.raises(ValueError, match="costs"):
        balanced_blocks(3, 2, [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        balanced_blocks(2, 2, [1, -1])
    with pytest.raises(ValueError, match="parts"):
        balanced_blocks(2, 0)


# -- one process ------------------------------------------------------------------------------------------


def test_single_process_paths_are_the_plain_decode() -> None:
    single = ParallelState.single()
    assert decode_split([1, 2, 3], lambda i: torch.tensor([i]), single, torch.device("cpu")) == [
        torch.tensor([1]), torch.tensor([2]), torch.tensor([3])
    ]
    os_inputs, cv_inputs = _inputs()
    vae = _opensora()
    for z, n in os_inputs:
        whole = vae.decode(z, n)
        assert torch.equal(vae.decode(z, n, parallel=single), whole)
        clips = vae.decode_items(n)
        assert [c.frames for c in clips] == vae._clips(n) and clips[-1].z_start + clips[-1].z_frames == z.shape[2]
        torch.testing.assert_close(vae.assemble([vae.decode_item(z, c) for c in clips]), whole, rtol=0, atol=0)
    causal = _causal()
    for z in cv_inputs:
        whole = causal.decode(z)
        assert torch.equal(causal.decode(z, parallel=single), whole)
        tiles = causal.decode_items(z)
        got = causal.assemble(z, tiles, [causal.decode_item(z, t) for t in tiles])
        torch.testing.assert_close(got, whole, rtol=0, atol=0)
    assert len(causal.decode_items(cv_inputs[0])) == 12 and len(causal.decode_items(cv_inputs[1])) == 1
    assert len(causal.decode_items(cv_inputs[0], tiled=False)) == 1


# -- several ranks ----------------------------------------------------------------------------------------


def _ranks(rank: int, world_size: int, os_inputs: list[tuple[torch.Tensor, int]],
           cv_inputs: list[torch.Tensor]) -> dict[str, Any]:
    """One rank: every check's result on rank 0, and what each rank decoded (decoder input shapes).

    Rank 0 also returns the plain single-process decodes, computed in its own process: with another
    thread count (the pytest process's) the convolutions sum in another order, a few 1e-6 apart.
    """
    torch.set_num_threads(1)  # the ranks share the machine's cores; the same setting on every rank
    state = ParallelState.create(ParallelConfig(sp=world_size))
    out: dict[str, Any] = {}

    calls: list[int] = []
    out["split"] = decode_split([0, 1], lambda i: (calls.append(i), torch.full((i + 1, 2), float(i)))[1],
                                state, torch.device("cpu"))
    out["split_calls"] = calls

    vae = _opensora()
    os_shapes: list[tuple[int, ...]] = []
    vae.temporal_vae.decoder.register_forward_pre_hook(lambda _m, args: os_shapes.append(tuple(args[0].shape)))
    out["opensora"], out["opensora_shapes"] = [], []
    for z, n in os_inputs:
        os_shapes.clear()
        out["opensora"].append(vae.decode(z, n, parallel=state))
        out["opensora_shapes"].append(list(os_shapes))
    out["opensora_ref"] = [vae.decode(z, n) if state.is_driver else None for z, n in os_inputs]

    causal = _causal()
    cv_shapes: list[tuple[int, ...]] = []
    causal.decoder.register_forward_pre_hook(lambda _m, args: cv_shapes.append(tuple(args[0].shape)))
    out["causal"], out["causal_shapes"] = [], []
    for z in cv_inputs:
        cv_shapes.clear()
        out["causal"].append(causal.decode(z, parallel=state))
        out["causal_shapes"].append(list(cv_shapes))
    out["causal_ref"] = [causal.decode(z) if state.is_driver else None for z in cv_inputs]
    out["sends"] = state.stats.calls("gather_to_driver")
    return out


def _volume(shape: tuple[int, ...]) -> int:
    _, _, t, h, w = shape
    return t * h * w


@pytest.mark.parametrize("world_size", [2, 3])
def test_decode_split_over_ranks(world_size: int) -> None:
    os_inputs, cv_inputs = _inputs()
    results = run_local(_ranks, world_size, os_inputs, cv_inputs)
    driver, others = results[0], results[1:]

    # decode_split with a trivial decode: 2 items, outputs in item order on rank 0 only.
    assert [r["split_calls"] for r in results] == ([[0], [1]] if world_size == 2 else [[0], [1], []])
    assert [t.tolist() for t in driver["split"]] == [[[0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]
    assert all(r["split"] is None for r in others)

    # Open-Sora VAE: rank 0's video equals the single-process decode; the clips were split by frame count.
    vae = _opensora()
    for k, (z, n) in enumerate(os_inputs):
        reference = driver["opensora_ref"][k]
        assert reference.shape == vae.decode(z, n).shape
        torch.testing.assert_close(driver["opensora"][k], reference, rtol=0, atol=1e-6)
        assert all(r["opensora"][k] is None for r in others)
        clips = vae.decode_items(n)
        blocks = balanced_blocks(len(clips), world_size, [c.frames for c in clips])
        counts = [len(r["opensora_shapes"][k]) for r in results]
        assert counts == [b - a for a, b in blocks] and sum(counts) == len(clips)
        for r, (a, b) in zip(results, blocks, strict=True):  # each rank decoded exactly its own clips
            assert r["opensora_shapes"][k] == [(1, 4, c.z_frames, 2, 3) for c in clips[a:b]]
    counts = [len(r["opensora_shapes"][0]) for r in results]  # 5 clips
    assert counts == ([2, 3] if world_size == 2 else [2, 1, 2])
    if world_size == 3:
        assert [len(r["opensora_shapes"][1]) for r in results] == [1, 0, 1]  # 2 clips: rank 1 idle

    # CausalVAE: rank 0's blended video equals the single-process tiled decode; the tiles were split by volume.
    causal = _causal()
    z = cv_inputs[0]
    assert driver["causal_ref"][0].shape == causal.decode(z).shape
    torch.testing.assert_close(driver["causal"][0], driver["causal_ref"][0], rtol=0, atol=1e-6)
    tiles = causal.decode_items(z)
    assert sorted(s for r in results for s in r["causal_shapes"][0]) == sorted(
        (1, 4, t.t1 - t.t0, t.height, t.width) for t in tiles
    )
    volumes = [sum(_volume(s) for s in r["causal_shapes"][0]) for r in results]
    total, largest = sum(t.cost for t in tiles), max(t.cost for t in tiles)
    assert sum(volumes) == total and all(abs(v - total / world_size) <= largest for v in volumes)
    assert all(len(r["causal_shapes"][0]) >= 12 // world_size - 1 for r in results)
    # A latent within one tile is one piece: rank 0 decodes it, nobody else decodes anything.
    torch.testing.assert_close(driver["causal"][1], driver["causal_ref"][1], rtol=0, atol=1e-6)
    assert [len(r["causal_shapes"][1]) for r in results] == [1] + [0] * (world_size - 1)
    assert all(r["causal"][k] is None for r in others for k in range(2))

    assert driver["sends"] == 0 and all(r["sends"] > 0 for r in others if any(r["causal_shapes"][0]))
