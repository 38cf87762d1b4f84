"""``videosys bench``: end-to-end GPU benchmark of a model at its paper settings with random full-size weights
(PAB off and each preset), on one device or through the Ray worker pool (``--gpus N --sp K``), optionally
our Latte against diffusers'. JSON and a markdown table."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_pab_cache_argument

    p = sub.add_parser("bench", help="benchmark a model on the GPU (random full-size weights, no download)")
    p.add_argument("--model", default="opensora", help="comma-separated model names (default: opensora)")
    p.add_argument("--pab", default=None, help="comma-separated PAB presets besides 'none' (default: every preset)")
    add_pab_cache_argument(p)
    p.add_argument("--repeats", type=int, default=3, help="timed requests per setting (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per setting first")
    p.add_argument("--steps", type=int, default=None, help="override the paper's step count (shorter runs)")
    p.add_argument("--resolution", default=None,
                   help="another size than the paper's where the model has a size table (Open-Sora: 144p to 720p)")
    p.add_argument("--aspect", default=None, help="the aspect of --resolution (Open-Sora: e.g. 9:16, 1:1)")
    p.add_argument("--frames", default=None,
                   help="another frame count than the paper's (a number, or a model's alias such as Open-Sora's 4s)")
    p.add_argument("--weights", default="random", help="'random' (default) or a checkpoint folder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compare-diffusers", action="store_true",
                   help="also time our Latte transformer against diffusers' on the same weights")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our denoisers' block pieces (the warm-up requests compile; default off)")
    p.add_argument("--offload-text-encoder", action="store_true",
                   help="text encoder in host memory between requests (its copy to the GPU is timed with it)")
    p.add_argument("--prompt", default=None,
                   help="the caption of every request (default: a short one; its length decides whether the "
                        "cross-attention folds: at most 72 tokens for these models)")
    p.add_argument("--json", default=None, help="write the results here")
    from ..cli import add_fused_kernels_argument, add_pool_arguments

    add_fused_kernels_argument(p)
    add_pool_arguments(p)  # --gpus N --sp K ...: the same requests through the Ray worker pool
    p.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from ..bench.harness import run_bench
    from ..cli import pool_kwargs

    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"repeats: {args.repeats} / warmup: {args.warmup} not allowed (allowed: repeats >= 1, warmup >= 0)")
    presets = [p for p in args.pab.split(",") if p and p != "none"] if args.pab is not None else None
    sizes = {"steps": args.steps, "resolution": args.resolution, "aspect": args.aspect,
             "frames": int(args.frames) if args.frames and args.frames.isdigit() else args.frames}
    overrides = {k: v for k, v in sizes.items() if v}  # the requests validate them per model
    out: dict[str, object] = {}
    for model in [m for m in args.model.split(",") if m]:
        report = run_bench(model, pab=presets, repeats=args.repeats, warmup=args.warmup, overrides=overrides,
                           device=args.device, weights=args.weights, pab_cache=args.pab_cache, prompt=args.prompt,
                           engine_kwargs={**pool_kwargs(args), "compile": args.compile,
                                          "offload_text_encoder": args.offload_text_encoder,
                                          "fused_kernels": args.fused_kernels, "float8": args.float8,
                                          "cuda_graphs": args.cuda_graphs})
        print(report.markdown() + "\n")
        out[model] = report.as_dict()
    if args.compare_diffusers:
        from ..bench.latte_vs_diffusers import compare_latte

        cmp = compare_latte(compile=args.compile, pab_cache=args.pab_cache)
        print("| Latte-1 transformer (fp16) | ours | diffusers | ours speedup |\n|---|---|---|---|")
        print(f"| one step (ms) | {cmp['ours_step_ms']:.1f} | {cmp['diffusers_step_ms']:.1f} | {cmp['step_speedup']:.2f}x |")
        print(f"| 50 calls, no PAB (s) | {cmp['ours_nopab_loop_s']:.2f} | {cmp['diffusers_nopab_loop_s']:.2f} | "
              f"{cmp['loop_speedup_nopab']:.2f}x |")
        print(f"| 50 calls, PAB236 (s) | {cmp['ours_pab236_loop_s']:.2f} | {cmp['diffusers_pab_loop_s']:.2f} | "
              f"{cmp['loop_speedup_pab']:.2f}x |")
        print(f"| peak GiB no PAB / PAB | {cmp['ours_nopab_peak_gib']:.2f} / {cmp['ours_pab236_peak_gib']:.2f} | "
              f"{cmp['diffusers_nopab_peak_gib']:.2f} / {cmp['diffusers_pab_peak_gib']:.2f} | |")
        if "ours_pab_cache_format" in cmp:
            print(f"| 50 calls, PAB236 {cmp['ours_pab_cache_format']} cache (s); peak GiB | "
                  f"{cmp['ours_pab236_cache_loop_s']:.2f}; {cmp['ours_pab236_cache_peak_gib']:.2f} | | |")
        out["latte_vs_diffusers"] = cmp
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0
