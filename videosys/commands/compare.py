"""``videosys compare A B``: PSNR and SSIM per video and their mean, between two videos, two folders of videos
(matched by name) or two batch manifests (matched by prompt and seed). See docs/pab.md, "Quality"."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..quality import compare

    report = compare(args.a, args.b, progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="PSNR / SSIM of videos against reference videos", description=__doc__)
    p.add_argument("a", help="reference: a video (.mp4, .gif, PNG-frame folder), a folder of videos or a .jsonl manifest")
    p.add_argument("b", help="the videos to score against A, of the same sort as A")
    p.add_argument("--json", action="store_true", help="print the scores as JSON (infinite PSNR as \"inf\")")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)
