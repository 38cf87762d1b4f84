"""Sequence and CFG parallel on GPUs (NCCL): equality of the bundled smoke models' videos against one GPU
(PSNR), and 1 vs N GPU timing of the full-size transformers with random weights (no download), PAB off/on.

    python scripts/bench_parallel.py --gpus 2 [--models opensora,latte] [--skip-check] [--json OUT]

Timing: Open-Sora 480p 9:16 4s (latent [*, 4, 30, 60, 106], bf16, 30 RFLOW calls) and Latte 16 x 512 x 512
(latent [*, 4, 16, 64, 64], fp16, 50 DDIM calls); each layout runs the whole call loop with the model's
default PAB preset and without; rank 0's wall clock, medians over repeats after a warm-up loop.
Prints markdown tables; results go to docs/benchmarks.md with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from videosys.models.random_init import fill_random_  # noqa: E402
from videosys.parallel import ParallelConfig, ParallelState  # noqa: E402
from videosys.parallel.launch import run_local  # noqa: E402
from videosys.quality.metrics import psnr  # noqa: E402


# -- equality on the smoke models ------------------------------------------------------------------------------
def _smoke_rank(rank: int, world: int, model: str, layout: ParallelConfig, dtype: str) -> Any:
    from videosys import VideoSysEngine
    from videosys.runtime import run_rank

    engine = VideoSysEngine(model, device="cuda", dtype=dtype, progress=False)
    requests = [engine.make_request("a red panda eating bamboo", seed=1, pab=p) for p in ("none", "default")]
    results = run_rank(rank, world, engine.pipeline_spec(), layout, requests)
    return None if results is None else [(r.frames, r.comm_stats) for r in results]


def check_smoke(gpus: int) -> list[dict[str, Any]]:
    rows = []
    layouts = [ParallelConfig(sp=gpus)] + ([ParallelConfig(cfg=True, sp=gpus // 2)] if gpus % 2 == 0 else [])
    for model, dtype in (("latte", "float16"), ("opensora", "bfloat16"), ("opensora-plan", "float16")):
        ref = run_local(_smoke_rank, 1, model, ParallelConfig(), dtype, backend="nccl")[0]
        for layout in layouts:
            got = run_local(_smoke_rank, layout.world_size, model, layout, dtype, backend="nccl")[0]
            for (frames, comm_stats), (ref_frames, _), pab in zip(got, ref, ("off", "default")):
                rows.append({"model": model, "dtype": dtype, "layout": layout.describe(), "pab": pab,
                             "psnr_db": psnr(frames, ref_frames),
                             "comm_mib": comm_stats.get("total", {}).get("bytes", 0) / 2**20})
    return rows


# -- timing of the full-size transformers -------------------------------------------------------------------
def _build(model: str, layout: ParallelConfig) -> tuple[Any, dict[str, Any], list[float], str]:
    """The transformer, the per-call inputs for this rank's CFG branch, the call timesteps, its PAB preset."""
    from videosys.registry import default_registry

    gen = torch.Generator(device="cuda").manual_seed(1)
    batch = 1 if layout.cfg else 2
    if model == "opensora":
        from videosys.models.opensora import STDiT3, STDiT3Config
        from videosys.schedulers.rflow import RFlowSchedule

        dtype = torch.bfloat16
        with torch.device("cuda"):
            net = STDiT3(STDiT3Config())
        schedule = RFlowSchedule.create(30, 480, 854, 102)
        x = torch.randn(batch, 4, 30, 60, 106, device="cuda", generator=gen).to(dtype)
        mask = torch.zeros(batch, 300, dtype=torch.long, device="cuda")
        mask[:, :40] = 1
        kw = {"y": torch.randn(batch, 300, 4096, device="cuda", generator=gen).to(dtype), "mask": mask}
        kw.update({k: torch.full((batch,), float(v), device="cuda", dtype=dtype)
                   for k, v in (("fps", 24), ("height", 480), ("width", 854))})
        ts = [float(t) for t in schedule.model_timesteps]
        preset = "pab246"

        def call(t: float, pab: Any, parallel: Any) -> Any:
            return net(x, torch.full((batch,), t, device="cuda"), kw["y"], kw["mask"], fps=kw["fps"],
                       height=kw["height"], width=kw["width"], pab=pab, parallel=parallel)
    else:
        from videosys.models.latte import LatteConfig, LatteTransformer3D

        dtype = torch.float16
        with torch.device("cuda"):
            net = LatteTransformer3D(LatteConfig())
        net.init_nonpersistent_buffers("cuda")
        x = torch.randn(batch, 4, 16, 64, 64, device="cuda", generator=gen).to(dtype)
        text = torch.randn(batch, 20, 4096, device="cuda", generator=gen).to(dtype)
        ts = [float(980 - 20 * i) for i in range(50)]
        preset = "pab236"

        def call(t: float, pab: Any, parallel: Any) -> Any:
            return net(x, torch.full((batch,), t, device="cuda"), text, pab=pab, parallel=parallel)
    fill_random_(net, seed=0)
    net = net.to(dtype).eval().requires_grad_(False)
    config = default_registry().get(model).load_config().pab.get(preset)
    return call, {"dtype": str(dtype)}, ts, config


def _time_rank(rank: int, world: int, model: str, layout: ParallelConfig, repeats: int) -> Any:
    import torch.distributed as dist

    from videosys.pab import PABConfig, PABScheduler
    from videosys.parallel import comm

    torch.cuda.set_device(rank)
    state = ParallelState.create(layout)
    call, meta, ts, preset = _build(model, layout)
    out: dict[str, Any] = {"model": model, "layout": layout.describe(), **meta}
    with torch.inference_mode():
        for name, pab in (("off", PABConfig.disabled()), (preset.name, preset)):
            def loop() -> None:
                with PABScheduler(pab).new_run(ts) as run:
                    for t in ts:
                        run.begin_call()
                        y = call(t, run, state)
                        comm.cfg_all_gather(y, state)

            loop()  # warm-up
            times = []
            for _ in range(repeats):
                state.stats.reset()
                torch.cuda.synchronize()
                dist.barrier()
                start = time.perf_counter()
                loop()
                torch.cuda.synchronize()
                dist.barrier()
                times.append(time.perf_counter() - start)
            out[f"{len(ts)} calls, PAB {name} (s)"] = statistics.median(times)
            out[f"comm, PAB {name} (GiB per rank)"] = state.stats.as_dict()["total"]["bytes"] / 2**30
            out[f"peak memory, PAB {name} (GiB)"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_layouts(models: list[str], gpus: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    layouts = [ParallelConfig(), ParallelConfig(sp=gpus)]
    if gpus % 2 == 0:
        layouts.append(ParallelConfig(sp=gpus // 2, cfg=True))
    for model in models:
        for layout in layouts:
            rows.append(run_local(_time_rank, layout.world_size, model, layout, repeats, backend="nccl",
                                  timeout_s=900)[0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--models", default="opensora,latte")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "gpus": args.gpus}
    if not args.skip_check:
        report["check"] = check_smoke(args.gpus)
        print("| model | dtype | layout | PAB | PSNR vs 1 GPU (dB) | comm (MiB, all ranks) |\n|---|---|---|---|---|---|")
        for r in report["check"]:
            print(f"| {r['model']} | {r['dtype']} | {r['layout']} | {r['pab']} | {r['psnr_db']:.1f} | {r['comm_mib']:.2f} |")
    if not args.skip_timing:
        report["timing"] = time_layouts(args.models.split(","), args.gpus, args.repeats)
        for row in report["timing"]:
            print(f"\n{row['model']} {row['layout']} {row['dtype']}")
            for k, v in row.items():
                if isinstance(v, float):
                    print(f"| {k} | {v:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
