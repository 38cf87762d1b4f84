"""Shared fixtures: tiny checkpoints in the official on-disk layout, written at test time (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_OVERLAY = """\
description: tiny Latte written by the tests
sampling:
  frames: 4
  height: 32
  width: 32
allowed:
  frames: [1, 4]
  sizes: [[32, 32], [32, 48]]
"""


@pytest.fixture(scope="session")
def tiny_latte_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from videosys.testing.tiny_latte import write_tiny_latte

    path = tmp_path_factory.mktemp("ckpt") / "tiny-latte"
    write_tiny_latte(path, seed=0, video_length=4, sample_size=4, extra_files={"videosys.yaml": TINY_OVERLAY})
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_latte_dir: Path):
    from videosys import VideoSysEngine

    return VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_opensora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Open-Sora 1.2 folder (transformer/, vae/, text_encoder/) with the official sizes table."""
    from videosys.testing.tiny_opensora import write_tiny_opensora

    return write_tiny_opensora(tmp_path_factory.mktemp("ckpt") / "tiny-opensora", seed=0)


@pytest.fixture(scope="session")
def tiny_opensora_engine(tiny_opensora_dir: Path):
    from videosys import VideoSysEngine

    return VideoSysEngine("opensora", weights=tiny_opensora_dir, device="cpu", progress=False)


TINY_OSP_OVERLAY = """\
description: tiny Open-Sora-Plan written by the tests
sampling:
  frames: 5
  height: 64
  width: 64
allowed:
  frames: [5, 9]
  sizes: [[64, 64]]
"""


@pytest.fixture(scope="session")
def tiny_opensora_plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Open-Sora-Plan folder with transformers for 5 and 9 frames at 64 x 64 (2 and 3 latent frames)."""
    from videosys.testing.tiny_opensora_plan import write_tiny_opensora_plan

    return write_tiny_opensora_plan(tmp_path_factory.mktemp("ckpt") / "tiny-osp", seed=0, frames=(5, 9),
                                    sample_size=8, extra_files={"videosys.yaml": TINY_OSP_OVERLAY})


@pytest.fixture(scope="session")
def tiny_opensora_plan_engine(tiny_opensora_plan_dir: Path):
    from videosys import VideoSysEngine

    return VideoSysEngine("opensora-plan", weights=tiny_opensora_plan_dir, device="cpu", progress=False)
