"""Host syncs of a request on the GPU, by site: a short and a longer request of the same model (after a
warm-up request), counted with torch's sync debug mode (:mod:`videosys.bench.syncs`). The sites whose count
grows with the steps are the sampling loop's, each of which stalls the GPU once per step; the script exits
with status 1 when there are any.

    python scripts/check_syncs.py --model opensora [--steps 2 4] [--float8] [--weights random]
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from videosys import VideoSysEngine
from videosys.bench.syncs import count_syncs, per_step

logger = logging.getLogger("check_syncs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora")
    ap.add_argument("--steps", type=int, nargs=2, default=(2, 4), metavar=("SHORT", "LONG"),
                    help="sampling steps of the two counted requests (default 2 4)")
    ap.add_argument("--pab", default="none", help="PAB preset of the requests (default none)")
    ap.add_argument("--float8", action="store_true", help="float8 block linears (videosys.kernels.float8)")
    ap.add_argument("--weights", default="random",
                    help="'random' (default: full size) or a checkpoint folder ('' the model's default weights)")
    args = ap.parse_args()
    short, long = args.steps
    if not 0 < short < long:
        ap.error(f"--steps: SHORT and LONG must satisfy 0 < SHORT < LONG, got {short} {long}")
    if not torch.cuda.is_available():
        ap.error("no CUDA device: host syncs are counted with torch's CUDA sync debug mode")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = VideoSysEngine(args.model, weights=args.weights or None, device="cuda", progress=False,
                            float8=args.float8)

    def request(steps: int) -> None:
        engine.generate("a red panda eating bamboo", steps=steps, seed=0, pab=args.pab)

    request(short)  # warm-up: kernel compilation, allocator growth
    counts = {steps: count_syncs(lambda steps=steps: request(steps)) for steps in (short, long)}
    for steps, sites in counts.items():
        logger.info("%d-step request: %d host syncs", steps, sum(sites.values()))
        for site, n in sites.most_common():
            logger.info("  %4d  %s", n, site)
    loop = per_step(counts[short], counts[long], short, long)
    if not loop:
        logger.info("the sampling loop makes no host syncs")
        return 0
    logger.info("host syncs per sampling step:")
    for site, n in loop.items():
        logger.info("  %6.2f  %s", n, site)
    return 1


if __name__ == "__main__":
    sys.exit(main())
