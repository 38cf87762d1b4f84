"""Where a denoiser call's GPU time goes: torch.profiler over a model at its paper settings with random
full-size weights; prints the top kernels/ops by CUDA time.

Two modes:

* default: a whole request of ``--steps`` steps (text encoder, denoise loop, VAE decode all in the window);
* ``--denoiser-only``: one denoiser call's inputs are captured during a one-step request, then the denoiser
  alone is called ``--calls`` times (PAB off). Besides the table it prints the wall-clock milliseconds per
  call (synchronised) against the GPU's kernel time per call: a gap between the two is time the GPU waits on
  the host (launch overhead), which no kernel fusion removes. With ``--compile`` it also prints torch
  dynamo's counters (graphs captured, recompiles), which tell whether the compiled pieces are the ones run.

    python scripts/profile_denoise.py --model opensora [--steps 3] [--top 30] [--compile] [--trace OUT.json]
    python scripts/profile_denoise.py --model opensora --denoiser-only [--calls 5] [--compile]
                                      [--float8] [--no-fold] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from videosys import VideoSysEngine
from videosys.bench.capture import capture_denoiser_call, local_pipeline
from videosys.models.layers.folded_attention import use_folded_cross_attention

logger = logging.getLogger("profile")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_denoiser(engine: VideoSysEngine, prompt: str, calls: int, top: int, trace: str | None) -> None:
    denoiser, args, kwargs = capture_denoiser_call(engine, prompt)
    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation with --compile)
            denoiser(*args, **kwargs)
        synchronize(engine.device)
        walls = []
        for _ in range(calls):
            start = time.perf_counter()
            denoiser(*args, **kwargs)
            synchronize(engine.device)
            walls.append((time.perf_counter() - start) * 1e3)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                denoiser(*args, **kwargs)
            synchronize(engine.device)
    averages = prof.key_averages()
    # device-side events only (kernels, copies, sets): the ops that launched them carry the same time again
    kernel_ms = sum(e.time_range.elapsed_us() for e in prof.events()
                    if e.device_type == DeviceType.CUDA) / 1e3 / calls
    logger.warning("\n%s", averages.table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=70))
    walls.sort()
    logger.warning("denoiser alone: wall %.1f ms per call (median of %d, synchronised), GPU kernels %.1f ms per "
                   "call -> the GPU idles %.1f ms per call", walls[len(walls) // 2], calls, kernel_ms,
                   walls[len(walls) // 2] - kernel_ms)
    if engine.compile:
        from torch._dynamo.utils import counters

        logger.warning("dynamo: stats %s, recompiles %s, graph breaks %s", dict(counters["stats"]),
                       dict(counters["recompiles"]), dict(counters["graph_break"]))
    if trace:
        prof.export_chrome_trace(trace)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--pab", default="none")
    ap.add_argument("--trace", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the block pieces (as --compile elsewhere)")
    ap.add_argument("--denoiser-only", action="store_true",
                    help="profile the denoiser alone on one captured call's inputs (PAB off)")
    ap.add_argument("--calls", type=int, default=5, help="denoiser calls timed and profiled (--denoiser-only)")
    ap.add_argument("--no-fused", action="store_true",
                    help="keep the torch path where a fused kernel applies (videosys.kernels), for an A/B")
    ap.add_argument("--float8", action="store_true", help="float8 block linears (videosys.kernels.float8)")
    ap.add_argument("--no-fold", action="store_true",
                    help="attend every caption unfolded (videosys.models.layers.folded_attention), for an A/B")
    ap.add_argument("--prompt", default="a red panda eating bamboo",
                    help="the caption (its token count decides whether the cross-attention folds)")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the script")
    ap.add_argument("--weights", default="random",
                    help="'random' (default: full size) or a checkpoint folder ('' the model's default weights)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engine = VideoSysEngine(args.model, weights=args.weights or None, device=args.device, progress=False,
                            compile=args.compile, fused_kernels=not args.no_fused, float8=args.float8)
    if args.no_fold:
        use_folded_cross_attention(local_pipeline(engine).transformer, False)
    if args.denoiser_only:
        profile_denoiser(engine, args.prompt, args.calls, args.top, args.trace)
        return
    request = engine.make_request(args.prompt, steps=args.steps, pab=args.pab)
    engine.generate_requests([request])  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate_requests([request])
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70)
    logger.warning("\n%s", table)
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
