"""What ``--float8`` changes: one request at the model's paper settings with bf16 / fp16 linears, then the
same request (same seed) with float8 linears, on one engine. Reports the denoise time of each, the first
denoiser call's output difference (identical inputs: the float8 error of one call) and the PSNR / SSIM of
the float8 video against the other. With random weights (the default: no download) the videos are not
pictures, so the PSNR measures how far the two sampling trajectories drift apart, not visual quality.

    python scripts/compare_float8.py --model opensora [--steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch

from videosys import VideoSysEngine
from videosys.bench.capture import local_pipeline
from videosys.quality.metrics import psnr, ssim

logger = logging.getLogger("compare_float8")


def first_call_output(engine: VideoSysEngine, request: Any) -> tuple[Any, torch.Tensor]:
    """Generate ``request``; also return the denoiser's output of its first call."""
    transformer = local_pipeline(engine).transformer
    outputs: list[torch.Tensor] = []

    def keep_first(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if not outputs:
            outputs.append(output.detach().float().clone())

    handle = transformer.register_forward_hook(keep_first)
    try:
        result = engine.generate_requests([request])[0]
    finally:
        handle.remove()
    return result, outputs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora")
    ap.add_argument("--weights", default="random", help="'random' (default: full size) or a checkpoint folder")
    ap.add_argument("--prompt", default="a red panda eating bamboo in a misty forest")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {"steps": args.steps} if args.steps else {}
    with VideoSysEngine(args.model, weights=args.weights, progress=False) as engine:
        request = engine.make_request(args.prompt, pab="none", seed=args.seed, **overrides)
        engine.generate_requests([request])  # warm-up
        plain, plain_call = first_call_output(engine, request)
        local_pipeline(engine).enable_float8()
        engine.generate_requests([request])  # warm-up
        fp8, fp8_call = first_call_output(engine, request)
    report = {
        "model": args.model, "weights": args.weights, "steps": request.steps, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "denoise_s": {"plain": plain.timings.get("denoise"), "float8": fp8.timings.get("denoise")},
        "first_call_relative_error": ((fp8_call - plain_call).norm() / plain_call.norm()).item(),
        "first_call_max_abs_error": (fp8_call - plain_call).abs().max().item(),
        "video_psnr_db": psnr(plain.frames, fp8.frames),
        "video_ssim": ssim(plain.frames, fp8.frames),
    }
    logger.info("%s", json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
