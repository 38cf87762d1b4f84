"""``videosys launch --gpus N [--sp K] [--cfg-parallel] [--address ADDR] CONFIG.yaml [key=value ...]``: a batch
config on the Ray worker pool. The pool options replace the config's ``parallel`` section; everything else
(validation before any work, the resumable manifest, exit codes) is ``videosys batch``'s."""

from __future__ import annotations

import argparse
from typing import Any

from .batch import add_batch_arguments, run_batch_command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "launch", help="run a batch config on a multi-GPU Ray worker pool",
        description="Run a batch config on N ranks: groups of sp (x2 with --cfg-parallel) ranks share each video, "
                    "the groups serve different prompts at the same time. --device cpu in the config (or "
                    "device=cpu) runs N CPU processes over gloo.")
    p.add_argument("--gpus", type=int, required=True, metavar="N", help="ranks in the pool (one GPU each)")
    p.add_argument("--sp", type=int, default=None, metavar="K", help="sequence-parallel degree of each video")
    p.add_argument("--cfg-parallel", action="store_true", default=None,
                   help="run the conditional and unconditional branches on two ranks")
    p.add_argument("--address", default=None, help="join a Ray cluster ('auto' or HOST:PORT) instead of starting one")
    add_batch_arguments(p)
    p.set_defaults(handler=run_launch_command)
    return p


def run_launch_command(args: argparse.Namespace) -> int:
    parallel: dict[str, Any] = {"world_size": args.gpus, "sp": args.sp, "cfg_parallel": args.cfg_parallel,
                                "ray_address": args.address}
    return run_batch_command(args, **{k: v for k, v in parallel.items() if v is not None})
