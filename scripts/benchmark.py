"""Thin entry point of ``videosys bench`` (see ``videosys bench --help``):

    python scripts/benchmark.py --model opensora,latte --compare-diffusers --json bench.json
"""

import sys

from videosys.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
