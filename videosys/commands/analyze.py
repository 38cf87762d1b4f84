"""``videosys analyze``: one generation with PAB off, recording how every attention (and MLP) output changes
from one denoiser call to the next; writes differences.json / differences.csv and PNG plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a corgi running on the beach at sunset"


def add_measurement_args(p: argparse.ArgumentParser) -> None:
    """The options of one measured generation (shared with ``videosys calibrate``)."""
    p.add_argument("--model", required=True, help="registered model name (latte, opensora, opensora-plan)")
    p.add_argument("--weights", default=None, help="checkpoint folder or hub id (default: the model's bundled checkpoint)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt of the measured run (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--frames", default=None, help="number of frames, or a length name such as 2s (Open-Sora)")
    p.add_argument("--resolution", default=None, help="size-table resolution, e.g. 480p (Open-Sora)")
    p.add_argument("--aspect", default=None, help="size-table aspect ratio height:width (Open-Sora)")
    p.add_argument("--height", type=int, default=None, help="height in pixels")
    p.add_argument("--width", type=int, default=None, help="width in pixels")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: the model's for the device)")
    p.add_argument("--keep-on", default=None,
                   help="device that holds the previous call's outputs (default: theirs; 'cpu' saves GPU memory)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def measure(args: argparse.Namespace):
    """Run the measured generation the options describe; returns ``(profile, result)``."""
    from ..analysis import record_generation
    from ..engine import VideoSysEngine

    overrides: dict[str, Any] = {
        "steps": args.steps, "seed": args.seed, "guidance": args.guidance, "frames": args.frames,
        "resolution": args.resolution, "aspect": args.aspect, "height": args.height, "width": args.width,
    }
    engine = VideoSysEngine(model=args.model, weights=args.weights, device=args.device, dtype=args.dtype,
                            pab="none", progress=not args.no_progress)
    engine.make_request(args.prompt, **overrides)  # validate before loading any weights
    try:
        return record_generation(engine, args.prompt, keep_on=args.keep_on, **overrides)
    finally:
        engine.shutdown()


def summary_table(profile) -> str:
    """Per kind: the difference at the first measured call, the minimum (and where), the last, the mean."""
    lines = [f"{'kind':<9}{'layers':>7}  {'metric':<7}{'first':>11}{'min':>11}{'@call':>6}{'last':>11}{'mean':>11}"]
    for kind in profile.kinds:
        for metric in ("mse", "rel_l2"):
            curve = [(i, v) for i, v in enumerate(profile.kind_curve(kind, metric)) if v is not None]
            if not curve:
                continue
            i_min, v_min = min(curve, key=lambda iv: iv[1])
            mean = sum(v for _, v in curve) / len(curve)
            label = kind if metric == "mse" else ""
            layers = str(len(profile.layers(kind))) if metric == "mse" else ""
            lines.append(f"{label:<9}{layers:>7}  {metric:<7}{curve[0][1]:>11.4g}{v_min:>11.4g}{i_min:>6}"
                         f"{curve[-1][1]:>11.4g}{mean:>11.4g}")
    return "\n".join(lines)


def write_outputs(profile, out: Path) -> list[Path]:
    """differences.json, differences.csv and the PNG plots in ``out``."""
    from ..analysis.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    paths = [profile.save_json(out / "differences.json"), profile.save_csv(out / "differences.csv")]
    paths += write_plots(profile, out)
    return paths


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output: {str(out)!r} exists and is not a folder")
    if args.video is not None and Path(args.video).suffix.lower() not in ("", ".mp4", ".gif"):
        raise ValueError(f"video: suffix {Path(args.video).suffix!r} not allowed (allowed: .mp4, .gif, or a folder for PNG frames)")
    profile, result = measure(args)
    paths = write_outputs(profile, out)
    if args.video is not None:
        paths.append(result.save(args.video))
    print(f"model {profile.meta.get('model')}: {profile.num_calls} calls, prompt {profile.meta.get('prompt')!r}, "
          f"seed {profile.meta.get('seed')} (PAB off)")
    print(summary_table(profile))
    print(f"wrote {len(paths)} files to {out}/" + (f" and the video {args.video}" if args.video else ""))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="measure attention differences across denoising steps (PAB off)",
                       description=__doc__)
    add_measurement_args(p)
    p.add_argument("-o", "--output", required=True, help="folder for differences.json/.csv and the PNG plots")
    p.add_argument("--video", default=None, help="also save the generated (PAB-off) video here (.mp4, .gif or a folder)")
    p.set_defaults(handler=run)
