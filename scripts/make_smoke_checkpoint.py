#!/usr/bin/env python
"""Write the bundled random-initialised smoke-test checkpoints (models/latte-smoke/, models/opensora-smoke/,
models/opensora-plan-smoke/).

Each checkpoint has its model's official on-disk layout with tiny, seeded random weights plus a
``videosys.yaml`` overlay; the same code always writes the same weight bytes. Usage::

    python scripts/make_smoke_checkpoint.py                               # every bundled smoke model
    python scripts/make_smoke_checkpoint.py --model opensora [--out DIR]  # one of them
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WRITERS = {
    "latte": ("videosys.testing.tiny_latte", REPO_ROOT / "models" / "latte-smoke"),
    "opensora": ("videosys.testing.tiny_opensora", REPO_ROOT / "models" / "opensora-smoke"),
    "opensora-plan": ("videosys.testing.tiny_opensora_plan", REPO_ROOT / "models" / "opensora-plan-smoke"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*WRITERS, "all"], default="all", help="which smoke model (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (only with one --model; "
                        "default: models/<model>-smoke)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if args.out is not None and args.model == "all":
        parser.error("--out needs a single --model")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the smoke checkpoint(s) and print their paths."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing the package
    for name in WRITERS if args.model == "all" else [args.model]:
        module, default_out = WRITERS[name]
        writer = importlib.import_module(module).write_smoke_checkpoint
        print(writer(args.out or default_out, overwrite=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
