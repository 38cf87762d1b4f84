"""The ``videosys`` command. Errors are one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("videosys.cli")

EXIT_FAILED = 1
EXIT_USAGE = 2


def _slug(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one video from a prompt")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--model", default="latte", help="registered model name (default: latte)")
    p.add_argument("--weights", default=None,
                   help="checkpoint folder, hub id, or 'random' (official sizes, random weights: benchmarks) "
                        "(default: the model's bundled checkpoint)")
    p.add_argument("--pab", default="none", help="PAB preset name, 'default', a YAML file, or 'none' (default: none)")
    add_pab_cache_argument(p)
    p.add_argument("--steps", type=int, default=None, help="denoising steps")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (<= 1 disables CFG)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--frames", default=None, help="number of frames, or a length name such as 2s (Open-Sora)")
    p.add_argument("--resolution", default=None, help="size-table resolution, e.g. 480p (Open-Sora)")
    p.add_argument("--aspect", default=None, help="size-table aspect ratio height:width, e.g. 9:16 (Open-Sora)")
    p.add_argument("--height", type=int, default=None, help="height in pixels")
    p.add_argument("--width", type=int, default=None, help="width in pixels")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the written video")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for CFG")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: the model's for the device)")
    p.add_argument("-o", "--output", default=None, help="output .mp4, .gif, or a folder for PNG frames")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser's block pieces (faster on a GPU after a first, slower request)")
    p.add_argument("--offload-text-encoder", action="store_true",
                   help="keep the text encoder in host memory, on the device only while it encodes")
    add_fused_kernels_argument(p)
    add_pool_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_fused_kernels_argument(p: argparse.ArgumentParser) -> None:
    """``--no-fused-kernels``: the torch path where a fused Triton kernel would apply (videosys.kernels);
    ``--float8``: float8 block linears where they apply (videosys.kernels.float8); ``--no-cuda-graphs``:
    every denoiser call eager (videosys.pipelines.cuda_graph)."""
    p.add_argument("--no-fused-kernels", dest="fused_kernels", action="store_false",
                   help="keep the attention on the torch path where a fused Triton kernel would apply (GPU)")
    p.add_argument("--float8", action="store_true",
                   help="run the denoiser blocks' main linears in float8 e4m3 (Ada / Hopper GPUs, eager mode; "
                        "faster, changes the numbers by a few percent per linear)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run every denoiser call eagerly (default: replay CUDA graphs of a request's calls where "
                        "the GPU waits on the host, e.g. small sizes: one GPU, no --compile)")


def add_pab_cache_argument(p: argparse.ArgumentParser) -> None:
    """``--pab-cache``: the format PAB keeps outputs in (videosys.pab.kept)."""
    from .pab.config import CACHE_FORMATS

    p.add_argument("--pab-cache", default=None, choices=CACHE_FORMATS,
                   help="how PAB keeps outputs for its broadcasts: native (default) or int8 (about half the memory)")


def add_pool_arguments(p: argparse.ArgumentParser) -> None:
    """The worker-pool options of ``generate`` and ``launch``."""
    g = p.add_argument_group("several devices (a Ray worker pool)")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="ranks in the pool: N GPUs, or with --device cpu N CPU processes over gloo (default 1)")
    g.add_argument("--sp", type=int, default=None, metavar="K", help="sequence-parallel degree of each request")
    g.add_argument("--cfg-parallel", action="store_true", default=None,
                   help="run the conditional and unconditional branches on two ranks")
    g.add_argument("--address", default=None, help="join a Ray cluster ('auto' or HOST:PORT) instead of starting one")
    g.add_argument("--placement", default=None, choices=("pack", "spread"), help="pack ranks on few nodes or spread them")
    g.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds any wait of the pool may take")


def pool_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Engine keyword arguments of the pool options that were given."""
    values = {"world_size": args.gpus, "sp": args.sp, "cfg_parallel": args.cfg_parallel, "ray_address": args.address,
              "placement": args.placement, "timeout_s": args.timeout}
    return {k: v for k, v in values.items() if v is not None}


def _add_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the registered models, their sizes and PAB presets")


#: Subcommands that live in their own module under ``videosys.commands``: each module has
#: ``add_parser(sub)``, which adds its parser and sets ``handler`` (``args -> exit code``) as its default.
COMMAND_MODULES: tuple[str, ...] = ("analyze", "batch", "bench", "calibrate", "compare", "demo_eval", "launch")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="videosys", description="Text-to-video inference with Pyramid Attention Broadcast")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_models(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(f"videosys.commands.{name}").add_parser(sub)
    return parser


def _format_summary(result, path: Path) -> str:
    lines = [f"model      {result.model}", f"prompt     {result.request.prompt!r} (seed {result.request.seed})"]
    t = result.timings
    lines.append(
        "timings    " + ", ".join(f"{k} {t[k]:.2f}s" for k in ("text_encoder", "denoise", "vae_decode", "total") if k in t)
    )
    kept = f" (kept outputs: peak {result.pab_peak_kept_bytes / 2**20:.1f} MiB)" if result.request.pab.enabled else ""
    lines.append(f"pab        {result.request.pab.label}{kept}")
    for kind, counts in result.pab_stats.items():
        total = counts["computed"] + counts["broadcast"]
        lines.append(f"  {kind:<9}{counts['broadcast']:>6} broadcast / {total:>6} calls")
    if result.replayed_calls:
        lines.append(f"graphs     {result.replayed_calls} denoiser calls replayed from CUDA graphs")
    if result.comm_stats:
        lines.append("comm       (all ranks)")
        for kind, counts in result.comm_stats.items():
            lines.append(f"  {kind:<17}{counts['calls']:>7} calls {counts['bytes'] / 2**20:>10.1f} MiB")
    lines.append(f"output     {path} ({result.num_frames} frames, {result.frames.shape[2]}x{result.frames.shape[1]}, {result.fps} fps)")
    return "\n".join(lines)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .engine import VideoSysEngine
    from .pab import with_cache_format

    out = Path(args.output) if args.output else Path("outputs") / f"{_slug(args.prompt)}.mp4"
    if out.suffix and out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"output: suffix {out.suffix!r} not allowed (allowed: .mp4, .gif, or a folder for PNG frames)")
    engine = VideoSysEngine(model=args.model, weights=args.weights, device=args.device, dtype=args.dtype,
                            pab=with_cache_format(args.pab, args.pab_cache), progress=not args.no_progress,
                            compile=args.compile, offload_text_encoder=args.offload_text_encoder,
                            fused_kernels=args.fused_kernels, float8=args.float8, cuda_graphs=args.cuda_graphs,
                            **pool_kwargs(args))
    with engine:
        return _generate_with(engine, args, out)


def _generate_with(engine, args: argparse.Namespace, out: Path) -> int:
    overrides = {
        "steps": args.steps, "guidance": args.guidance, "seed": args.seed, "frames": args.frames,
        "height": args.height, "width": args.width, "resolution": args.resolution, "aspect": args.aspect, "fps": args.fps, "negative_prompt": args.negative_prompt,
    }
    engine.make_request(args.prompt, **overrides)  # validate before loading any weights
    result = engine.generate(args.prompt, **overrides)
    path = _save_or_keep(result, out)
    if args.json:
        print(json.dumps({**result.summary(), "output": str(path)}, indent=2))
    else:
        print(_format_summary(result, path))
    return 0


def _save_or_keep(result, out: Path) -> Path:
    """Save the video; if that fails, keep the generated frames as PNGs beside it so no work is lost."""
    try:
        return result.save(out)
    except (OSError, ValueError) as exc:
        fallback = out.with_name(out.stem + "_frames")
        try:
            result.save(fallback)
        except (OSError, ValueError):
            raise exc from None
        raise type(exc)(f"{str(exc).splitlines()[0]} (the frames were kept in {fallback}/)") from None


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import default_registry

    registry = default_registry()
    for name in registry.names():
        config = registry.get(name).load_config()
        s = config.sampling
        presets = ", ".join(sorted(config.pab.presets)) + (f" (default {config.pab.default})" if config.pab.default else "")
        print(f"{name}: {config.description}")
        a = config.allowed
        print(f"  sizes {a.describe_sizes()}; frames {a.describe_frames()}; {s.steps} steps, guidance {s.guidance}")
        for res, aspects in a.resolutions.items():
            print(f"    {res}: " + ", ".join(f"{k} {h}x{w}" for k, (h, w) in aspects.items()))
        official = config.weights_official
        if isinstance(official, dict):
            official = ", ".join(f"{repo} (folder root)" if part == "." else f"{part} {repo}"
                                 for part, repo in official.items())
        print(f"  weights: default {config.weights_default}, official {official}")
        print(f"  PAB presets: {presets}")
    return 0


def _quiet_libraries() -> None:
    """The CLI owns its process: keep the libraries' loading chatter out of the user's terminal."""
    try:
        import diffusers
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import WorkerError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    commands = {"generate": _cmd_generate, "models": _cmd_models}
    handler = getattr(args, "handler", None) or commands[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("videosys: interrupted", file=sys.stderr)
        return 130
    except WorkerError as exc:  # a rank died or hung: not the user's input, but still one clear line
        print(f"videosys: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, FileNotFoundError, OSError) as exc:
        # VideoSysError subclasses are ValueError / FileNotFoundError: one line, no traceback.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"videosys: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
