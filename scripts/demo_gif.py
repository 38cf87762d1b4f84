"""Render a grid GIF of demo-model videos (the picture in docs/demo.md and the README).

    python scripts/demo_gif.py --out docs/images/demo/grid.gif
    python scripts/demo_gif.py --out grid.gif --prompt "a red circle moving left" --prompt "a blue square moving up"

Each prompt is generated with the registry's default Latte checkpoint (the bundled demo model unless
``--weights`` says otherwise) at its default settings and seed ``--seed + i``; the videos are tiled row by
row and scaled up by an integer factor with nearest-neighbour sampling.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from tqdm.auto import tqdm

from videosys import VideoSysEngine

DEFAULT_PROMPTS = (
    "a red circle moving left",  # a training combination
    "a blue square moving up",
    "a yellow triangle growing",
    "a green circle moving right",
    "a purple square standing still",
    "a orange triangle moving down",
)


def tile(videos: list[np.ndarray], columns: int, scale: int, gap: int = 2) -> np.ndarray:
    """``[T, H, W, 3]`` videos of one size -> one ``[T, rows*(H*scale+gap)-gap, ...]`` video (white gaps)."""
    t, h, w, _ = videos[0].shape
    rows = math.ceil(len(videos) / columns)
    sh, sw = h * scale + gap, w * scale + gap
    grid = np.full((t, rows * sh - gap, columns * sw - gap, 3), 255, dtype=np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, columns)
        big = video.repeat(scale, axis=1).repeat(scale, axis=2)
        grid[:, r * sh:r * sh + h * scale, c * sw:c * sw + w * scale] = big
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="GIF to write")
    ap.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: six shapes)")
    ap.add_argument("--weights", default=None, help="checkpoint folder (default: the bundled demo model)")
    ap.add_argument("--pab", default="none", help="PAB preset for every video (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--columns", type=int, default=3)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    engine = VideoSysEngine("latte", weights=args.weights, device=args.device, progress=False)
    videos = [engine.generate(p, seed=args.seed + i, pab=args.pab).frames
              for i, p in enumerate(tqdm(prompts, desc="generate"))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(args.out, list(tile(videos, args.columns, args.scale)), duration=1000 / engine.config.sampling.fps,
                    loop=0)
    logging.getLogger("demo_gif").warning("wrote %s (%d videos)", args.out, len(videos))


if __name__ == "__main__":
    main()
