#!/usr/bin/env python
"""Write the bundled random-initialised smoke-test checkpoint (default: models/latte-smoke/).

The checkpoint has the diffusers layout of ``maxin-cn/Latte-1`` with tiny,
seeded random weights plus a ``videosys.yaml`` overlay; the same code always
writes the same bytes.  Usage::

    python scripts/make_smoke_checkpoint.py [--out models/latte-smoke]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "latte-smoke"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the smoke checkpoint and print its path."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing the package
    from videosys.testing.tiny_latte import write_smoke_checkpoint

    out = write_smoke_checkpoint(args.out, overwrite=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
