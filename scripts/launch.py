"""Thin entry point of ``videosys launch`` (a batch config on the Ray worker pool):

    python scripts/launch.py --gpus 8 --sp 4 configs/batch/latte-official-pab.yaml
"""

import sys

from videosys.cli import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
