"""``videosys eval``: the demo model's offline quality benchmark (held-out prompt adherence; with ``--pab``
also adherence and PSNR against PAB off)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from videosys.cli import add_pab_cache_argument

    p = sub.add_parser("eval", help="score prompt adherence of the demo model on held-out prompts")
    p.add_argument("--model", default="latte", help="registered model name (default: latte)")
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the model's bundled checkpoint)")
    p.add_argument("--pab", default="none",
                   help="PAB preset to compare against PAB off (adherence and PSNR), or 'none' (default: none)")
    add_pab_cache_argument(p)
    p.add_argument("--n", type=int, default=None, help="number of prompts (default: each held-out combination once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def _table(report: Any) -> list[str]:
    acc = report.accuracy
    return [(f"  {report.pab:<10} colour {100 * acc['colour']:5.1f}%  shape {100 * acc['shape']:5.1f}%  "
            f"motion {100 * acc['motion']:5.1f}%  all {100 * acc['all']:5.1f}%  ({report.seconds:.1f}s)")]


def run(args: argparse.Namespace) -> int:
    """Handler of ``videosys eval`` (returns the exit code)."""
    from videosys.demo.eval import compare_pab, evaluate, held_out_prompts
    from videosys.engine import VideoSysEngine
    from videosys.pab import with_cache_format

    prompts = held_out_prompts(args.n, seed=args.seed)
    engine = VideoSysEngine(model=args.model, weights=args.weights, device=args.device, progress=False)
    try:
        compare = str(args.pab).lower() not in ("none", "off", "")
        if compare:
            # validated before any work; the resolved config carries the cache format and its label
            pab = engine.make_request(prompts[0].prompt, pab=with_cache_format(args.pab, args.pab_cache)).pab
            out = compare_pab(engine, prompts, pab)
            payload = {"off": out["off"].to_dict(), "pab": out["pab"].to_dict(), "psnr": out["psnr"],
                       "adherence_drop": out["adherence_drop"]}
            reports = [out["off"], out["pab"]]
        else:
            report = evaluate(engine, prompts, "none")
            payload = {"off": report.to_dict()}
            reports = [report]
    finally:
        engine.shutdown()
    if args.json:
        print(json.dumps({"model": args.model, "weights": str(engine.checkpoint), **payload}, indent=2,
                         default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)))
        return 0
    print(f"held-out adherence of {engine.checkpoint} ({len(prompts)} prompts)")
    for report in reports:
        print("\n".join(_table(report)))
    if compare:
        print(f"  PSNR vs PAB off: mean {out['psnr']['mean']:.2f} dB, min {out['psnr']['min']:.2f} dB; "
              f"adherence drop {out['adherence_drop']:+.1f} points")
    return 0
