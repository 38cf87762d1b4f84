"""CUDA graphs on and off, request by request: per size and PAB setting, the denoise milliseconds per step
(median over the requests after a warm-up; a step is a call except for PNDM's first steps), the calls replayed, the peak memory, and whether the graphed
request's video equals the eager one (docs/benchmarks.md, thirteenth session).

Each setting runs twice in alternation (eager, graphs, eager, graphs: the first of each a warm-up request
plus two timed, the second two timed), so a drift of the machine falls on both.

    python scripts/bench_graphs.py --model opensora --sizes 240p,360p,480p --pab none,pab246 [--float8]
    python scripts/bench_graphs.py --model latte
    python scripts/bench_graphs.py --model opensora --sizes 144p --device cpu --weights ''   # a dry run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics

import numpy as np
import torch

from videosys import VideoSysEngine
from videosys.bench.capture import local_pipeline

logger = logging.getLogger("bench_graphs")


def run_setting(engine: VideoSysEngine, request, rounds: int = 2) -> dict:
    pipeline = local_pipeline(engine)
    per_step: dict[bool, list[float]] = {False: [], True: []}
    replayed: dict[bool, list[int]] = {False: [], True: []}
    peak: dict[bool, float] = {False: 0.0, True: 0.0}
    frames: dict[bool, np.ndarray] = {}
    cuda = engine.device.type == "cuda"
    for round_index in range(rounds):
        for graphs in (False, True):
            pipeline.cuda_graphs = graphs
            for i in range(3 if round_index == 0 else 2):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(engine.device)
                result = engine.generate_requests([request])[0]
                if round_index or i:  # the first request of the first round warms up
                    per_step[graphs].append(result.timings["denoise"] / result.request.steps * 1e3)
                    replayed[graphs].append(result.replayed_calls)
                if cuda:
                    peak[graphs] = max(peak[graphs], torch.cuda.max_memory_allocated(engine.device) / 2**30)
                frames[graphs] = result.frames
    return {
        "size": [request.frames, request.height, request.width],
        "pab": request.pab.label,
        "eager ms/step": round(statistics.median(per_step[False]), 1),
        "graphs ms/step": round(statistics.median(per_step[True]), 1),
        "eager runs": [round(t, 1) for t in per_step[False]],
        "graphs runs": [round(t, 1) for t in per_step[True]],
        "replayed calls per graphs request": replayed[True],
        "peak GiB eager / graphs": [round(peak[False], 2), round(peak[True], 2)],
        "video max abs diff": int(np.abs(frames[True].astype(np.int16) - frames[False].astype(np.int16)).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora")
    ap.add_argument("--sizes", default="paper", help="comma-separated Open-Sora resolutions (or 'paper')")
    ap.add_argument("--aspect", default="9:16", help="the aspect of --sizes (Open-Sora)")
    ap.add_argument("--pab", default="none", help="comma-separated PAB settings ('none' or preset names)")
    ap.add_argument("--float8", action="store_true")
    ap.add_argument("--prompt", default="a red panda eating bamboo in a misty forest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", default="random", help="'random' (default: full size), a folder, or '' (bundled)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("videosys.pipelines.cuda_graph").setLevel(logging.INFO)  # the probe's decisions
    engine = VideoSysEngine(args.model, weights=args.weights or None, device=args.device, progress=False,
                            float8=args.float8)
    results = []
    for size in [s for s in args.sizes.split(",") if s]:
        for pab in [p for p in args.pab.split(",") if p]:
            fields = {} if size == "paper" else {"resolution": size, "aspect": args.aspect}
            request = engine.make_request(args.prompt, pab=pab, **fields)
            row = run_setting(engine, request)
            logger.warning("%s %s: %s", size, pab, json.dumps(row))
            results.append(row)
    print(json.dumps({"model": args.model, "float8": args.float8, "settings": results}, indent=1))


if __name__ == "__main__":
    main()
