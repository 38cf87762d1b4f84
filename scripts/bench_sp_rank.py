"""One sequence-parallel rank of a denoiser call, timed on one GPU (docs/benchmarks.md, fourteenth
session): what SP can reach where no second GPU is at hand.

The denoiser runs on the full latent as one GPU does, then as rank 0 of an SP group whose collectives are
local copies (the rank's own pieces stand in for what its peers would send): the rank's work is timed at
its true shapes, everything but the transfer between GPUs included (its shard, the attention between
the all-to-alls over its share of the sequences, the copies around them, float8 rows where they travel).
The transfer is added from the bytes the rank sends (counted by the run) at the given link bandwidths,
not overlapped with compute. Synchronised calls, median of ``--calls``.

    python scripts/bench_sp_rank.py [--float8] [--sp 2] [--bandwidths 450,350,250]   # Open-Sora 480p 4s
    python scripts/bench_sp_rank.py --model latte [--float8]      # Latte / Open-Sora-Plan at their paper size
    python scripts/bench_sp_rank.py --device cpu --weights '' --frames 51 --calls 2   # a dry run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Callable
from unittest import mock

import torch
import torch.distributed as dist

from videosys import VideoSysEngine
from videosys.bench import cuda_timed
from videosys.bench.capture import capture_denoiser_call
from videosys.parallel import ParallelConfig, ParallelState


def local_all_to_all(outputs: list[torch.Tensor], inputs: list[torch.Tensor], group: object = None) -> None:
    """``dist.all_to_all`` with this rank's piece standing in for every peer's."""
    for out, piece in zip(outputs, inputs):
        out.copy_(piece)


def local_all_gather(parts: list[torch.Tensor], x: torch.Tensor, group: object = None) -> None:
    for part in parts:
        part.copy_(x)


def median_ms(call: Callable[[], object], calls: int) -> float:
    """Median wall milliseconds of synchronised calls, after two untimed ones."""
    return statistics.median(cuda_timed(call, calls)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora", choices=["opensora", "latte", "opensora-plan"])
    ap.add_argument("--frames", default=None,
                    help="frames or an alias (default: Open-Sora 4s, the issue's SP target; others their own)")
    ap.add_argument("--resolution", default=None, help="Open-Sora's resolution (default 480p)")
    ap.add_argument("--sp", type=int, default=2)
    ap.add_argument("--float8", action="store_true")
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--bandwidths", default="450,350,250", help="GB/s per direction between two GPUs")
    ap.add_argument("--prompt", default="a red panda eating bamboo in a misty forest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", default="random", help="'random' (default: full size), a folder, or '' (bundled)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.sp < 2:
        ap.error(f"--sp {args.sp}: a rank of an SP group needs --sp >= 2")
    bandwidths = [float(b) for b in args.bandwidths.split(",") if b]
    fields: dict[str, object] = {"frames": "4s", "resolution": "480p"} if args.model == "opensora" else {}
    if args.frames:
        fields["frames"] = int(args.frames) if args.frames.isdigit() else args.frames
    if args.resolution:
        fields["resolution"] = args.resolution
    engine = VideoSysEngine(args.model, weights=args.weights or None, device=args.device, progress=False,
                            float8=args.float8)
    denoiser, call_args, kwargs = capture_denoiser_call(engine, args.prompt, **fields)
    state = ParallelState(config=ParallelConfig(sp=args.sp), world_size=args.sp)
    with torch.inference_mode():
        one_gpu = median_ms(lambda: denoiser(*call_args, **kwargs), args.calls)
        with mock.patch.object(dist, "all_to_all", local_all_to_all), \
                mock.patch.object(dist, "all_gather", local_all_gather):
            as_rank = dict(kwargs, parallel=state)
            rank = median_ms(lambda: denoiser(*call_args, **as_rank), args.calls)
            state.stats.reset()
            denoiser(*call_args, **as_rank)
    sent = {kind: {"calls": state.stats.calls(kind), "bytes": state.stats.bytes(kind)}
            for kind in ("all_to_all", "all_gather")}
    sent_bytes = sum(v["bytes"] for v in sent.values())
    projected = {f"{bw:g} GB/s": round(one_gpu / (rank + sent_bytes / (bw * 1e9) * 1e3), 3) for bw in bandwidths}
    print(json.dumps({
        "model": args.model, "latent": list(call_args[0].shape), "float8": args.float8, "sp": args.sp, "device": str(engine.device),
        "one GPU ms per call": round(one_gpu, 1), "rank ms per call, no transfer": round(rank, 1),
        "compute speedup": round(one_gpu / rank, 3), "rank sends per call": sent,
        f"projected SP {args.sp} speedup (transfer not overlapped)": projected,
    }, indent=1))


if __name__ == "__main__":
    main()
