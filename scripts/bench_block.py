"""One full-size transformer block at the paper's shapes, piece by piece: where a denoiser call's time goes
and what ``--compile`` does to each broadcastable piece.

For an Open-Sora 1.2 STDiT3 block (spatial and temporal; 480p 2s, CFG batch 2) or a Latte-1 block (spatial
and temporal; 16 x 512 x 512, CFG batch 2), random weights, it times (median of ``--repeats`` after warm-up,
CUDA events):

* each broadcastable piece and the whole block forward, eager and with each ``--modes`` compile mode
  (``inductor``: ``torch.compile`` as ``--compile`` does it; ``max-autotune``: Inductor with GEMM autotuning,
  no CUDA graphs; ``whole``: the whole block forward in one ``torch.compile`` graph, no PAB, for reference);
* the piece's GEMMs alone (``F.linear`` at its shapes) and its attention kernel alone: what a perfectly
  fused piece would still cost;
* the FLOPs of each piece against the GEMM rate measured in the same run (the floor);
* what PAB's int8 cache format (:mod:`videosys.pab.kept`) costs to keep and to restore one output.

    python scripts/bench_block.py --model opensora [--modes inductor,max-autotune,whole] [--profile] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from videosys.bench.harness import measure_gemm_tflops
from videosys.bench.timing import cuda_event_median_ms
from videosys.models.compile import compile_pieces
from videosys.models.layers.attention import scaled_dot_product
from videosys.models.random_init import fill_random_
from videosys.pab.kept import keep, restore

logger = logging.getLogger("bench_block")

HIDDEN, HEADS, HEAD_DIM = 1152, 16, 72
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a slow dry run of the script itself


def cuda_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``fn()`` between CUDA events; wall clock after one warm-up call on the CPU
    (the dry run of the script itself)."""
    if DEVICE == "cuda":
        return cuda_event_median_ms(fn, repeats)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``module`` with the random weights `--weights random` gives the full models (videosys.models.random_init)."""
    with torch.no_grad():
        fill_random_(module, seed)
    return module


@dataclass
class Case:
    """One block kind: the block, its pieces as closures over fixed inputs, and its GEMM/attention shapes."""

    name: str
    block: torch.nn.Module
    pieces: dict[str, Callable[[torch.nn.Module], Any]]
    forward: Callable[[torch.nn.Module], Any]
    gemms: dict[str, list[tuple[int, int, int]]]
    attention: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


def opensora_cases(dtype: torch.dtype) -> list[Case]:
    from videosys.models.layers.rope import RotaryEmbedding
    from videosys.models.opensora.stdit3 import STDiT3Block

    b, frames, tokens, text = 2, 15, 30 * 53, 40
    n = frames * tokens
    dev = DEVICE
    x = torch.randn(b, n, HIDDEN, device=dev, dtype=dtype)
    y = torch.randn(b, text, HIDDEN, device=dev, dtype=dtype)
    t_mlp = torch.randn(b, 6 * HIDDEN, device=dev, dtype=dtype) * 0.1
    rope = RotaryEmbedding(HEAD_DIM).to(dev).cos_sin(frames, dev)
    mods = [m.contiguous() for m in t_mlp.reshape(b, 6, HIDDEN).chunk(6, dim=1)]
    rows = b * n
    cases = []
    for temporal in (False, True):
        block = random_(STDiT3Block(HIDDEN, HEADS, 4 * HIDDEN, qk_norm=True, temporal=temporal), 1 + temporal)
        block = block.to(dev, dtype).eval()
        rope_arg = rope if temporal else None
        pieces = {
            "self_attention": lambda m, r=rope_arg: m.self_attention(x, mods[0], mods[1], mods[2], frames, tokens, r,
                                                                        keep_output=False),
            "cross_attention": lambda m: m.cross_attention(x, y, None),
            "feed_forward": lambda m: m.feed_forward(x, mods[3], mods[4], mods[5], keep_output=False),
        }
        attn_q = (b * n // frames, HEADS, frames, HEAD_DIM) if temporal else (b * frames, HEADS, tokens, HEAD_DIM)
        cases.append(Case(
            "opensora " + ("temporal" if temporal else "spatial"), block, pieces,
            lambda m, r=rope_arg: m(x, y, None, t_mlp, frames, tokens, r),
            gemms={"self_attention": [(rows, HIDDEN, 3 * HIDDEN), (rows, HIDDEN, HIDDEN)],
                   "cross_attention": [(rows, HIDDEN, HIDDEN), (b * text, HIDDEN, 2 * HIDDEN), (rows, HIDDEN, HIDDEN)],
                   "feed_forward": [(rows, HIDDEN, 4 * HIDDEN), (rows, 4 * HIDDEN, HIDDEN)]},
            attention={"self_attention": (attn_q, attn_q),
                       "cross_attention": ((b, HEADS, n, HEAD_DIM), (b, HEADS, text, HEAD_DIM))},
        ))
    return cases


def latte_cases(dtype: torch.dtype) -> list[Case]:
    from videosys.models.layers.blocks import LatteBlock

    b, frames, tokens, text = 2, 16, 32 * 32, 120
    dev = DEVICE
    t_mod = torch.randn(b, 6 * HIDDEN, device=dev, dtype=dtype) * 0.1
    mods = [m.contiguous() for m in t_mod.reshape(b, 6, HIDDEN).chunk(6, dim=1)]
    context = torch.randn(b, text, HIDDEN, device=dev, dtype=dtype)
    rows = b * frames * tokens
    cases = []
    for temporal in (False, True):
        seqs, length = (b * tokens, frames) if temporal else (b * frames, tokens)
        x = torch.randn(seqs, length, HIDDEN, device=dev, dtype=dtype)
        block = LatteBlock(HIDDEN, HEADS, HEAD_DIM, cross_attention_dim=None if temporal else HIDDEN,
                           attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6)
        block = random_(block, 3 + temporal).to(dev, dtype).eval()
        pieces: dict[str, Callable[[torch.nn.Module], Any]] = {
            "self_attention": lambda m, x=x: m.self_attention(x, mods[0], mods[1]),
            "mlp": lambda m, x=x: m.mlp(x, mods[3], mods[4]),
        }
        gemms = {"self_attention": [(rows, HIDDEN, 3 * HIDDEN), (rows, HIDDEN, HIDDEN)],
                 "mlp": [(rows, HIDDEN, 4 * HIDDEN), (rows, 4 * HIDDEN, HIDDEN)]}
        attention = {"self_attention": ((seqs, HEADS, length, HEAD_DIM), (seqs, HEADS, length, HEAD_DIM))}
        if not temporal:
            pieces["cross_attention"] = lambda m, x=x: m.cross_attention(x, context, None)
            gemms["cross_attention"] = [(rows, HIDDEN, HIDDEN), (b * text, HIDDEN, 2 * HIDDEN), (rows, HIDDEN, HIDDEN)]
            attention["cross_attention"] = ((b, HEADS, rows // b, HEAD_DIM), (b, HEADS, text, HEAD_DIM))
        cases.append(Case(
            "latte " + ("temporal" if temporal else "spatial"), block, pieces,
            lambda m, x=x, ctx=None if temporal else context: m(x, t_mod, ctx),
            gemms=gemms, attention=attention,
        ))
    return cases


def gemm_only_ms(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int) -> float:
    tensors = [(torch.randn(m, k, device=DEVICE, dtype=dtype), torch.randn(n, k, device=DEVICE, dtype=dtype),
                torch.randn(n, device=DEVICE, dtype=dtype)) for m, k, n in shapes]
    return cuda_ms(lambda: [F.linear(a, w, bias) for a, w, bias in tensors], repeats)


def attention_only_ms(q_shape: tuple[int, ...], kv_shape: tuple[int, ...], dtype: torch.dtype,
                      repeats: int) -> float:
    q = torch.randn(q_shape, device=DEVICE, dtype=dtype)
    k = torch.randn(kv_shape, device=DEVICE, dtype=dtype)
    v = torch.randn(kv_shape, device=DEVICE, dtype=dtype)
    return cuda_ms(lambda: scaled_dot_product(q, k, v), repeats)


def compiled(block: torch.nn.Module, mode: str) -> torch.nn.Module:
    """A copy of ``block`` compiled as ``mode``."""
    twin = copy.deepcopy(block)
    if mode == "inductor":
        compile_pieces(twin)
    elif mode == "max-autotune":
        compile_pieces(twin, mode="max-autotune-no-cudagraphs")
    elif mode == "whole":
        twin.forward = torch.compile(twin.forward, dynamic=False)  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown mode {mode!r} (inductor, max-autotune, whole)")
    return twin


def run_case(case: Case, modes: list[str], dtype: torch.dtype, rate: float, repeats: int,
             profile: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"pieces": {}}
    with torch.inference_mode():
        for piece, call in case.pieces.items():
            eager = functools.partial(call, case.block)
            stats: dict[str, Any] = {"tflop": flops(eager) / 1e12}
            stats["floor_ms"] = stats["tflop"] * 1e12 / rate * 1e3
            stats["eager_ms"] = cuda_ms(eager, repeats)
            stats["gemm_only_ms"] = gemm_only_ms(case.gemms[piece], dtype, repeats)
            if piece in case.attention:
                stats["attention_only_ms"] = attention_only_ms(*case.attention[piece], dtype, repeats)
            row["pieces"][piece] = stats
        row["forward_eager_ms"] = cuda_ms(lambda: case.forward(case.block), repeats)
        # what PAB's int8 cache format adds per kept and per broadcast output of this block's size
        output = next(iter(case.pieces.values()))(case.block)
        kept = keep(output, "int8")
        row["int8_keep_ms"] = cuda_ms(functools.partial(keep, output, "int8"), repeats)
        row["int8_restore_ms"] = cuda_ms(functools.partial(restore, kept), repeats)
        for mode in modes:
            twin = compiled(case.block, mode)
            if mode != "whole":
                for piece, call in case.pieces.items():
                    row["pieces"][piece][f"{mode}_ms"] = cuda_ms(functools.partial(call, twin), repeats)
            row[f"forward_{mode}_ms"] = cuda_ms(functools.partial(case.forward, twin), repeats)
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    case.forward(case.block)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
            row["profile_eager"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20,
                                                            max_name_column_width=60)
    return row


def report(results: dict[str, Any], modes: list[str]) -> str:
    lines = []
    for name, row in results["cases"].items():
        lines.append(f"\n{name}: forward eager {row['forward_eager_ms']:.3f} ms"
                     + "".join(f", {m} {row[f'forward_{m}_ms']:.3f} ms" for m in modes)
                     + f"; PAB int8 keep {row['int8_keep_ms']:.3f} ms, restore {row['int8_restore_ms']:.3f} ms")
        head = ["piece", "TFLOP", "floor ms", "eager ms"] + [f"{m} ms" for m in modes if m != "whole"]
        head += ["GEMMs alone ms", "attention alone ms"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for piece, s in row["pieces"].items():
            cells = [piece, f"{s['tflop']:.3f}", f"{s['floor_ms']:.3f}", f"{s['eager_ms']:.3f}"]
            cells += [f"{s[f'{m}_ms']:.3f}" for m in modes if m != "whole"]
            cells += [f"{s['gemm_only_ms']:.3f}", f"{s['attention_only_ms']:.3f}" if "attention_only_ms" in s else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        if "profile_eager" in row:
            lines.append(f"\nCUDA time of 3 eager forwards of {name}:\n{row['profile_eager']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opensora", choices=("opensora", "latte"))
    ap.add_argument("--modes", default="inductor", help="comma-separated: inductor, max-autotune, whole ('' none)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="also print the eager forward's top CUDA kernels")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if DEVICE == "cpu":
        logger.warning("no CUDA device: a dry run on the CPU (slow; times are wall clock)")
    modes = [m for m in args.modes.split(",") if m]
    dtype = torch.bfloat16 if args.model == "opensora" else torch.float16
    if DEVICE == "cpu":
        dtype = torch.float32
    # the floor's denominator, as `videosys bench` measures it (not measured in the CPU dry run)
    rate = measure_gemm_tflops(dtype, torch.device(DEVICE)) * 1e12 if DEVICE == "cuda" else float("nan")
    cases = opensora_cases(dtype) if args.model == "opensora" else latte_cases(dtype)
    results: dict[str, Any] = {"model": args.model, "dtype": str(dtype), "gemm_tflops": rate / 1e12,
                               "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                               "torch": torch.__version__, "cases": {}}
    for case in cases:
        results["cases"][case.name] = run_case(case, modes, dtype, rate, args.repeats, args.profile)
    logger.info("%s, %s, GEMM %.0f TFLOP/s%s", results["device"], dtype, rate / 1e12, report(results, modes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
