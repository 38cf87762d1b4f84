"""Open-Sora's VAE decode of one request's latent under launch variants: which of them pays (the decode is
1.5 s of an 8.3 s 480p 2s request on an H200; docs/benchmarks.md, ninth session).

Variants: the 2D decoder's micro-batch (images per call: 4 in the official config, more, or all frames at
once), channels-last convolution weights (``channels_last`` for the 2D decoder, ``channels_last_3d`` for the
temporal one; the activations follow the weights' layout), and cuDNN's autotuner
(``torch.backends.cudnn.benchmark``). Each reports the median decode time, the peak memory above what was
allocated before, and the largest difference of its frames from the default's.

    python scripts/bench_vae.py [--weights random] [--frames 51] [--height 480] [--width 854] [--repeats 3]
    python scripts/bench_vae.py --weights models/opensora-smoke --device cpu --frames 17 --height 64 --width 64
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import time
from collections.abc import Callable

import torch

from videosys import VideoSysEngine
from videosys.bench.capture import local_pipeline

logger = logging.getLogger("bench_vae")


def timed_decode(
    decode: Callable[[], torch.Tensor], device: torch.device, repeats: int
) -> tuple[float, float, torch.Tensor]:
    """(median seconds, peak GiB above the memory allocated before (nan on the CPU), frames) of ``decode()``,
    after a warm-up."""
    frames = decode()  # warm-up: cuDNN's autotuner, allocator growth
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        frames = decode()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if cuda else float("nan")
    return statistics.median(times), peak, frames


def set_memory_format(vae: torch.nn.Module, channels_last: bool) -> None:
    """Channels-last (or contiguous) weights for the 2D and 3D convolutions of ``vae``."""
    for module in vae.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.ndim in (4, 5):
            layout = {4: torch.channels_last, 5: torch.channels_last_3d}[weight.ndim]
            weight.data = weight.data.contiguous(memory_format=layout if channels_last else torch.contiguous_format)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="random",
                    help="'random' (default: full size) or an Open-Sora checkpoint folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=51)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--micro-batches", default="4,8,16,0",
                    help="2D decoder images per call to try, comma-separated (0: all frames at once)")
    args = ap.parse_args()
    try:
        micro_batches = [int(v) or None for v in args.micro_batches.split(",")]
    except ValueError:
        ap.error(f"--micro-batches: whole numbers separated by commas, got {args.micro_batches!r}")
    if any(m is not None and m < 0 for m in micro_batches) or args.repeats < 1:
        ap.error("--micro-batches must not be negative and --repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = VideoSysEngine("opensora", weights=args.weights, device=args.device, progress=False)
    pipeline = local_pipeline(engine)
    vae, device = pipeline.vae, torch.device(args.device)
    t, h, w = vae.latent_size(args.frames, args.height, args.width)
    z = torch.randn(1, vae.out_channels, t, h, w, generator=torch.Generator().manual_seed(0)).to(device, pipeline.dtype)
    logger.info("Open-Sora VAE decode of a [1, %d, %d, %d, %d] latent -> %d x %d x %d, %s on %s", vae.out_channels, t,
                h, w, args.frames, args.height, args.width, pipeline.dtype, device)
    default_batch = vae.spatial_vae.micro_batch_size
    cudnn_benchmark = torch.backends.cudnn.benchmark
    reference: torch.Tensor | None = None
    try:
        with torch.inference_mode():
            for micro_batch, channels_last, autotune in itertools.product(micro_batches, (False, True), (False, True)):
                vae.spatial_vae.micro_batch_size = micro_batch
                set_memory_format(vae, channels_last)
                torch.backends.cudnn.benchmark = autotune
                seconds, peak, frames = timed_decode(lambda: pipeline.decode(z, args.frames), device, args.repeats)
                if reference is None:
                    reference = frames.float()
                diff = (frames.float() - reference).abs().max().item()
                logger.info("micro-batch %-4s channels-last %-5s cudnn.benchmark %-5s %7.3f s  peak +%.2f GiB  "
                            "max abs difference %.3g", micro_batch or "all", channels_last, autotune, seconds, peak,
                            diff)
    finally:  # the process-wide switch and the engine's VAE as they were
        torch.backends.cudnn.benchmark = cudnn_benchmark
        vae.spatial_vae.micro_batch_size = default_batch
        set_memory_format(vae, False)


if __name__ == "__main__":
    main()
