"""Single-kernel candidates at the paper's shapes, each against what the models run now: where an eager or
compiled denoiser call could still save time (docs/benchmarks.md, fifth session).

* qk RMS norm over ``head_dim`` = 72 (Open-Sora's q at 480p 2s, spatial and temporal layouts):
  the reference float32 formula, ``F.rms_norm`` (what STDiT3 runs), a ``vector_norm`` form, and the
  reference formula through ``torch.compile``;
* the MLP's first GEMM + tanh GELU, unfused and as cuBLASLt's GELU epilogue (``torch._addmm_activation``).

    python scripts/bench_kernels.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from videosys.bench.timing import cuda_event_median_ms

logger = logging.getLogger("bench_kernels")

EPS = 1e-6
NORM_SHAPES = {"spatial [B*T, S, heads, 72]": (28, 1590, 16, 72), "temporal [B*S, T, heads, 72]": (3180, 14, 16, 72)}
MLP_TOKENS, HIDDEN, MLP_HIDDEN = 2 * 14 * 1590, 1152, 4608


def rms_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Llama-style: statistic and scaling in float32, rounded to the input dtype, then the weight."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + EPS)).to(x.dtype)


def rms_fused(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


def rms_vector_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(x.shape[-1])
    return x * ms.add_(EPS).rsqrt_().to(x.dtype) * w


def timed(name: str, fn: Callable[[], torch.Tensor], want: torch.Tensor | None, repeats: int, cuda: bool) -> None:
    err = float("nan") if want is None else (fn().float() - want.float()).abs().max().item()
    ms = cuda_event_median_ms(fn, repeats) if cuda else float("nan")
    logger.info("  %-28s %8.3f ms   max abs error %.3g", name, ms, err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (a CPU dry run: e.g. 0.01)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:
        logger.warning("no CUDA device: a dry run of the script on the CPU (no times)")
    compiled = torch.compile(rms_reference) if cuda else rms_reference
    for name, shape in NORM_SHAPES.items():
        shape = (max(1, int(shape[0] * args.scale)), *shape[1:])
        x = torch.randn(shape, device=device, dtype=dtype)
        w = torch.rand(shape[-1], device=device, dtype=dtype) + 0.5
        want = rms_reference(x, w)
        logger.info("qk RMS norm, %s %s:", name, list(shape))
        for label, fn in (("reference (float32)", rms_reference), ("F.rms_norm", rms_fused),
                          ("vector_norm", rms_vector_norm), ("reference, torch.compile", compiled)):
            timed(label, functools.partial(fn, x, w), want, args.repeats, cuda)
    tokens = max(8, int(MLP_TOKENS * args.scale))
    x = torch.randn(tokens, HIDDEN, device=device, dtype=dtype)
    w = torch.randn(MLP_HIDDEN, HIDDEN, device=device, dtype=dtype) * HIDDEN**-0.5
    b = torch.randn(MLP_HIDDEN, device=device, dtype=dtype) * 0.1
    want = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    logger.info("MLP fc1 + tanh GELU, [%d, %d] x [%d, %d]:", tokens, HIDDEN, HIDDEN, MLP_HIDDEN)
    timed("linear, then GELU", lambda: F.gelu(F.linear(x, w, b), approximate="tanh"), want, args.repeats, cuda)
    timed("linear alone", lambda: F.linear(x, w, b), None, args.repeats, cuda)
    timed("GELU epilogue (cuBLASLt)", lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), want,
          args.repeats, cuda)


if __name__ == "__main__":
    main()
