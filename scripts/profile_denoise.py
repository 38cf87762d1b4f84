"""Where a denoiser call's GPU time goes: torch.profiler over a few calls of a model at its paper settings
with random full-size weights; prints the top kernels/ops by CUDA time.

    python scripts/profile_denoise.py --model opensora [--steps 3] [--top 30] [--compile] [--trace OUT.json]
"""

from __future__ import annotations

import argparse
import logging

from torch.profiler import ProfilerActivity, profile

from videosys import VideoSysEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--pab", default="none")
    ap.add_argument("--trace", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the block pieces (as --compile elsewhere)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engine = VideoSysEngine(args.model, weights="random", device="cuda", progress=False,
                            compile=args.compile)
    request = engine.make_request("a red panda eating bamboo", steps=args.steps, pab=args.pab)
    engine.generate_requests([request])  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate_requests([request])
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70)
    logging.getLogger("profile").warning("\n%s", table)
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
