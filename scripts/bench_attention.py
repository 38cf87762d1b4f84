"""Time each torch SDPA backend (and plain batched matmuls) at the attention shapes of the paper settings.

    python scripts/bench_attention.py [--json OUT.json]

Shapes (CFG batch 2, bf16): Open-Sora 1.2 2s 480p (15 latent frames x 1590 tokens, 16 heads x 72) spatial,
temporal and cross (a 30-token caption, cut to its valid tokens so without a mask; and the same with a key
mask, as an uncut caption would need); Latte-1 16 x 512 x 512 (16 frames x 1024
tokens, 16 x 72) spatial and temporal. For each it prints the median ms of every backend that accepts the
shape and the largest difference from float32 math attention ("two matmuls" is the library's own
``matmul_attention``, the path CUDA takes for short sequences), so the default order in
``videosys.models.layers.attention`` can be checked on the device at hand.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from videosys.bench.timing import cuda_event_median_ms
from videosys.models.layers.attention import matmul_attention

logger = logging.getLogger("bench_attention")

SHAPES = {
    # name: (batch, heads, q_len, kv_len, head_dim, masked)
    "opensora.spatial": (2 * 15, 16, 1590, 1590, 72, False),
    "opensora.temporal": (2 * 1590, 16, 15, 15, 72, False),
    "opensora.cross": (2, 16, 15 * 1590, 30, 72, False),
    "opensora.cross_masked": (2, 16, 15 * 1590, 30, 72, True),
    "latte.spatial": (2 * 16, 16, 1024, 1024, 72, False),
    "latte.temporal": (2 * 1024, 16, 16, 16, 72, False),
}
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def bench_shape(b: int, h: int, lq: int, lk: int, d: int, masked: bool,
                gen: torch.Generator) -> dict[str, dict[str, float | str]]:
    """Median ms and max error vs float32 math of every candidate at one shape."""
    q = torch.randn(b, h, lq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b, h, lk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b, h, lk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    mask = None
    if masked:
        valid = torch.tensor([lk, lk // 2], device="cuda")
        mask = (torch.arange(lk, device="cuda")[None] < valid[:, None])[:, None, None, :]
    # the reference: float32 math on a slice (the full float32 problem may not fit)
    sl = slice(0, min(b, 8))
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q[sl].float(), k[sl].float(), v[sl].float(),
                                             attn_mask=None if mask is None else mask[sl])
    candidates = {key: (lambda backend=backend: _sdpa(q, k, v, mask, backend)) for key, backend in BACKENDS.items()}
    candidates["matmul"] = lambda: matmul_attention(q, k, v, mask)
    row: dict[str, dict[str, float | str]] = {}
    for key, fn in candidates.items():
        try:
            out = fn()
            row[key] = {"ms": cuda_event_median_ms(fn), "max_err": float((out[sl].float() - ref).abs().max())}
        except RuntimeError as exc:  # the backend refuses this shape / dtype / mask
            row[key] = {"error": str(exc).splitlines()[0][:120]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gen = torch.Generator(device="cuda").manual_seed(0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, shape in SHAPES.items():
        results[name] = row = bench_shape(*shape, gen)
        logger.info("%-20s %s", name, "  ".join(
            f"{key} {r['ms']:.3f} ms (err {r['max_err']:.1e})" if "ms" in r else f"{key} n/a" for key, r in row.items()))
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=2)


def _sdpa(q, k, v, mask, backend):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


if __name__ == "__main__":
    main()
