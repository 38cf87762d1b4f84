"""Generate the prompts of a YAML batch config, resuming from its manifest (the same as ``videosys batch``).

    python scripts/generate_batch.py configs/batch/latte-smoke.yaml [key=value ...] [--fail-fast] [--dry-run] [-v]

Exit code 0 when every item is done, 1 when any failed, 2 for config errors, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from videosys.commands.batch import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate_batch.py", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_parser(parser.add_subparsers(dest="command", required=True))
    rest = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in rest if a in ("-v", "--verbose")]
    args = parser.parse_args([*flags, "batch", *(a for a in rest if a not in flags)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
