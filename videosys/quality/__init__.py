"""Video quality against a reference: PSNR and SSIM (``videosys compare``)."""

from .compare import (
    CompareReport,
    PairScore,
    VideoPair,
    compare,
    match,
    read_manifest,
    score_pair,
)
from .metrics import check_pair, psnr, ssim, ssim_frames
from .video import read_video

__all__ = [
    "CompareReport",
    "PairScore",
    "VideoPair",
    "check_pair",
    "compare",
    "match",
    "psnr",
    "read_manifest",
    "read_video",
    "score_pair",
    "ssim",
    "ssim_frames",
]
