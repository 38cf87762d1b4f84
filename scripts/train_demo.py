"""Train the demo text-to-video model and write its checkpoint (see videosys/demo/train.py and docs/demo.md).

    python scripts/train_demo.py --out models/latte-demo --minutes 12 --seed 0          # one GPU
    python scripts/train_demo.py --out /tmp/demo --minutes 0.5 --device cpu             # CPU smoke test
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    from videosys.demo.train import main

    sys.exit(main())
