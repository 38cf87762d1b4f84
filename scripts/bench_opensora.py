"""Open-Sora 1.2 on a GPU with full-size random weights (no download): STDiT3 step time, the 30-call RFLOW
denoise loop with each PAB preset, and the chunked VAE decode.

    python scripts/bench_opensora.py [--resolution 480p] [--aspect 9:16] [--frames 2s] [--repeats 5] [--json OUT]

Prints a markdown table; results go to docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from videosys.bench import cuda_timed
from videosys.models.opensora import OpenSoraVAE, STDiT3, STDiT3Config
from videosys.models.random_init import fill_random_
from videosys.pab import PABConfig, PABScheduler
from videosys.registry import default_registry
from videosys.request import build_request
from videosys.schedulers.rflow import RFlowSchedule, latent_frames
from videosys.testing.tiny_opensora_vae import OFFICIAL_CONFIG


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--aspect", default="9:16")
    ap.add_argument("--frames", default="2s")
    ap.add_argument("--text-tokens", type=int, default=40, help="valid caption tokens of the prompt (of 300)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-repeats", type=int, default=3)
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    dtype = torch.bfloat16
    config = default_registry().get("opensora").load_config()
    request = build_request("bench", config, PABConfig.disabled(),
                            {"resolution": args.resolution, "aspect": args.aspect, "frames": args.frames})
    schedule = RFlowSchedule.create(request.steps, request.height, request.width, request.frames)
    with torch.device("cuda"):
        model = STDiT3(STDiT3Config())
    fill_random_(model, seed=0)
    model = model.to(dtype).eval().requires_grad_(False)

    t_lat, h_lat, w_lat = latent_frames(request.frames), request.height // 8, request.width // 8
    vae = None
    if not args.no_vae:
        with torch.device("cuda"):
            vae = OpenSoraVAE.from_config(OFFICIAL_CONFIG)
        fill_random_(vae, seed=1)
        vae = vae.to(dtype).eval().requires_grad_(False)
        assert vae.latent_size(request.frames, request.height, request.width) == (t_lat, h_lat, w_lat)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2, 4, t_lat, h_lat, w_lat, device="cuda", generator=gen).to(dtype)
    y = torch.randn(2, 300, 4096, device="cuda", generator=gen).to(dtype)
    mask = torch.zeros(2, 300, dtype=torch.long, device="cuda")
    mask[:, : args.text_tokens] = 1
    size = {name: torch.full((2,), float(v), device="cuda", dtype=dtype)
            for name, v in (("fps", request.fps), ("height", request.height), ("width", request.width))}

    rows: dict[str, float] = {}
    out: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bf16",
                              "size": [request.frames, request.height, request.width], "latent": list(x.shape)}
    with torch.inference_mode():
        t = torch.full((2,), 500.0, device="cuda")
        rows["STDiT3 step, CFG batch 2 (ms)"] = statistics.median(
            cuda_timed(lambda: model(x, t, y, mask, **size), args.repeats, warmup=2)) * 1e3

        def loop(pab: PABConfig) -> None:
            with PABScheduler(pab).new_run(schedule.model_timesteps) as run:
                for ts in schedule.timesteps:
                    run.begin_call()
                    model(x, torch.full((2,), float(ts), device="cuda"), y, mask, **size, pab=run)

        presets = {"none": PABConfig.disabled(), **{n: config.pab.get(n) for n in ("pab246", "pab357", "pab579")}}
        for name, pab in presets.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            secs = statistics.median(cuda_timed(lambda: loop(pab), args.loop_repeats, warmup=1))
            rows[f"{len(schedule)} calls, PAB {name} (s)"] = secs
            rows[f"peak memory, PAB {name} (GiB)"] = torch.cuda.max_memory_allocated() / 2**30
        base = rows[f"{len(schedule)} calls, PAB none (s)"]
        for name in ("pab246", "pab357", "pab579"):
            rows[f"{name} speedup (denoise)"] = base / rows[f"{len(schedule)} calls, PAB {name} (s)"]
        rows["transformer weights (GiB)"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30

        if vae is not None:
            del model
            torch.cuda.empty_cache()
            z = x[:1].contiguous()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            rows["VAE decode (s)"] = statistics.median(
                cuda_timed(lambda: vae.decode(z, num_frames=request.frames), max(1, args.repeats // 2), warmup=1))
            rows["VAE decode peak above weights (GiB)"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    out["results"] = rows
    print(f"device {out['device']}, torch {out['torch']}, bf16, video {out['size']}, latent {out['latent']}")
    print("| measure | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
