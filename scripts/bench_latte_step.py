"""Latte-1 transformer step time on a GPU: ours vs diffusers' LatteTransformer3DModel on identical random
weights (no download), with and without PAB over a 50-step DDIM schedule.

    python scripts/bench_latte_step.py [--dtype fp16] [--frames 16] [--size 512] [--repeats 10] [--json OUT]

A first measurement; `videosys bench` (issue 8) grows out of it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from videosys.bench import cuda_timed
from videosys.models.latte import LatteConfig, LatteTransformer3D
from videosys.pab import PABConfig, PABScheduler

DDIM50 = [980 - 20 * i for i in range(50)]


def random_latte(config: LatteConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LatteTransformer3D:
    with torch.device("meta"):
        model = LatteTransformer3D(config)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    model.init_nonpersistent_buffers(device)
    return model.to(dtype).eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--text-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    config = LatteConfig()
    ours = random_latte(config, device, dtype)
    lat = args.size // 8
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(2, 4, args.frames, lat, lat, device=device, generator=gen).to(dtype)
    text = torch.randn(2, args.text_tokens, 4096, device=device, generator=gen).to(dtype)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    rows: dict[str, float] = {}
    out: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype,
                              "shape": [2, 4, args.frames, lat, lat]}
    with torch.inference_mode():
        rows["ours step (ms)"] = statistics.median(cuda_timed(lambda: ours(x, t, text), args.repeats)) * 1e3
        if not args.no_diffusers:
            from diffusers import LatteTransformer3DModel

            # LatteConfig's fields are diffusers' config keys, so the same config builds the reference.
            ref = LatteTransformer3DModel(**{**dataclasses.asdict(config), "video_length": args.frames})
            ref.load_state_dict(ours.state_dict())
            ref = ref.to(device=device, dtype=dtype).eval()
            rows["diffusers step (ms)"] = statistics.median(
                cuda_timed(lambda: ref(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0], args.repeats)) * 1e3
            ref_half = ref(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].float()
            ours_half = ours(x, t, text).float()
            out["max_abs_diff_vs_diffusers"] = (ref_half - ours_half).abs().max().item()
            # Which half-precision result is closer to the fp32 truth (ours in fp32 equals diffusers in fp32)?
            truth = ours.float()(x.float(), t, text.float())
            ours.to(dtype)
            scale = truth.abs().max().item()
            out["fp32_max_abs"] = scale
            out["ours_half_vs_fp32_max_abs_err"] = (ours_half - truth).abs().max().item()
            out["diffusers_half_vs_fp32_max_abs_err"] = (ref_half - truth).abs().max().item()
            out["ours_half_vs_fp32_rmse"] = (ours_half - truth).pow(2).mean().sqrt().item()
            out["diffusers_half_vs_fp32_rmse"] = (ref_half - truth).pow(2).mean().sqrt().item()
            del truth
            rows["ours / diffusers speedup"] = rows["diffusers step (ms)"] / rows["ours step (ms)"]
            del ref
        torch.cuda.empty_cache()

        def run_schedule(pab: PABConfig) -> None:
            with PABScheduler(pab).new_run(DDIM50) as run:
                for ts in DDIM50:
                    run.begin_call()
                    ours(x, torch.full((2,), ts, device=device, dtype=torch.long), text, pab=run)

        presets = {"none": PABConfig.disabled(), "pab236": PABConfig.from_dict({
            "window": [100, 800], "spatial_range": 2, "temporal_range": 3, "cross_range": 6,
            "mlp": {"timesteps": [720, 640, 560, 480, 400], "blocks": [0, 1, 2, 3, 4], "skip_count": 2}})}
        for name, pab in presets.items():
            torch.cuda.reset_peak_memory_stats()
            secs = statistics.median(cuda_timed(lambda: run_schedule(pab), max(1, args.repeats // 5), warmup=1))
            rows[f"50 calls, PAB {name} (s)"] = secs
            rows[f"peak memory, PAB {name} (GiB)"] = torch.cuda.max_memory_allocated() / 2**30
        rows["PAB236 speedup (denoise)"] = rows["50 calls, PAB none (s)"] / rows["50 calls, PAB pab236 (s)"]
    out["results"] = rows
    print(f"device {out['device']}, torch {out['torch']}, {args.dtype}, latent {out['shape']}")
    print("| measure | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} |")
    for key in ("max_abs_diff_vs_diffusers", "fp32_max_abs", "ours_half_vs_fp32_max_abs_err",
                "diffusers_half_vs_fp32_max_abs_err", "ours_half_vs_fp32_rmse", "diffusers_half_vs_fp32_rmse"):
        if key in out:
            print(f"{key} = {out[key]:.4g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
