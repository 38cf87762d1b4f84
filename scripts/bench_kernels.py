"""Single-kernel candidates at the paper's shapes, each against what the models run now: where an eager or
compiled denoiser call could still save time (docs/benchmarks.md, fifth session).

* qk RMS norm over ``head_dim`` = 72 (Open-Sora's q at 480p 2s, spatial and temporal layouts):
  the reference float32 formula, ``F.rms_norm`` (what STDiT3 runs), a ``vector_norm`` form, and the
  reference formula through ``torch.compile``;
* the MLP's first GEMM + tanh GELU, unfused and as cuBLASLt's GELU epilogue (``torch._addmm_activation``);
* STDiT3's temporal attention at Open-Sora's 480p 2s shape (``[2, 15 x 1590, 1152]``, 16 heads of 72):
  the torch path (eager and compiled) against the fused Triton kernel (:mod:`videosys.kernels`), each
  against the same block in float32;
* STDiT3's cross-attention to captions of 12-120 tokens, folded into its projections and unfolded;
* Latte's temporal self-attention (16 frames, fp16): the torch path against the fused kernel;
* the blocks' layer norm + adaLN modulation (also after a residual add, in one kernel) and gate (+ residual)
  at Open-Sora's (bf16) and Latte's (fp16) token shapes: the torch path against the Triton kernels of
  :mod:`videosys.kernels.modulation`;
* each linear of a block (``qkv``, ``proj``, ``fc1``, ``fc2``) in bf16 against float8 e4m3 with a scale per
  token and per output channel (``torch._scaled_mm``), and what quantizing the activations costs; a block's
  norm + MLP, norm + ``qkv`` and gate + cross-attention ``q_linear`` in bf16 and in float8 as ``--float8``
  runs them (:mod:`videosys.kernels.float8`).

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
from videosys.kernels import fused_temporal_attention, temporal_attention_reference
from videosys.kernels.float8 import (
    Float8Weight,
    float8_linear,
    float8_unavailable,
    quantize_rows,
    quantize_rows_reference,
)
from videosys.kernels.folded_attention import folded_row_width, head_softmax_rows
from videosys.kernels.modulation import (
    add_layer_norm_modulate,
    apply_gate,
    apply_gate_and_add,
    apply_gate_and_add_float8,
    apply_gate_reference,
    layer_norm_modulate,
    layer_norm_modulate_float8,
    layer_norm_modulate_reference,
)
from videosys.kernels.rms_norm import rms_norm_rows
from videosys.models.layers.attention import Attention
from videosys.models.layers.float8 import linear, mlp_gelu_tanh
from videosys.models.layers.folded_attention import (
    attend_folded,
    fold_context,
    folded_kernel_path,
)
from videosys.models.layers.rope import RotaryEmbedding
from videosys.models.opensora.stdit3 import CrossAttention, STDiT3Block

logger = logging.getLogger("bench_kernels")

EPS = 1e-6
#: Back-to-back calls per timed sample: the host queues ahead of the GPU as in a forward, so a ~0.1 ms
#: kernel is timed without its launch (the eighth session's single-call samples included it).
CALLS_PER_SAMPLE = 10
NORM_SHAPES = {"spatial [B*T, S, heads, 72]": (28, 1590, 16, 72), "temporal [B*S, T, heads, 72]": (3180, 14, 16, 72)}
MLP_TOKENS, HIDDEN, MLP_HIDDEN = 2 * 14 * 1590, 1152, 4608
LINEARS = {"qkv": (HIDDEN, 3 * HIDDEN), "proj": (HIDDEN, HIDDEN), "fc1": (HIDDEN, MLP_HIDDEN),
           "fc2": (MLP_HIDDEN, HIDDEN)}


def rms_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Llama-style: statistic and scaling in float32, rounded to the input dtype, then the weight."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + EPS)).to(x.dtype)


def rms_fused(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


def rms_vector_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(x.shape[-1])
    return x * ms.add_(EPS).rsqrt_().to(x.dtype) * w


def bench_fp8(tokens: int, device: str, dtype: torch.dtype, repeats: int, cuda: bool) -> None:
    """Each block linear in bf16 and as a row-scaled float8 GEMM (:func:`videosys.kernels.float8.float8_linear`,
    weights quantized once), quantizing its input on its own (the torch definition, eager and compiled;
    the Triton kernel); then the MLP and the norm + ``qkv`` as the blocks run them, bf16 against float8
    with the quantize in the kernels that make the activations (:mod:`videosys.kernels.float8`)."""
    quantize = torch.compile(quantize_rows_reference) if cuda else quantize_rows_reference
    layers = {}
    for name, (k, n) in LINEARS.items():
        x = torch.randn(tokens, k, device=device, dtype=dtype)
        layer = torch.nn.Linear(k, n, device=device, dtype=dtype)
        layers[name] = layer
        weight = Float8Weight.from_linear(layer)
        want = F.linear(x.float(), layer.weight.float(), layer.bias.float())
        rows = quantize_rows_reference(x)
        logger.info("%s [%d, %d] x [%d, %d]:", name, tokens, k, k, n)
        with torch.no_grad():
            timed("bf16 linear", functools.partial(F.linear, x, layer.weight, layer.bias), want, repeats, cuda)
            timed("float8 GEMM (row scales)", functools.partial(float8_linear, rows, weight), want, repeats, cuda)
            timed("quantize x (torch, eager)", functools.partial(quantize_rows_reference, x), None, repeats, cuda)
            timed("quantize x (torch, compiled)", functools.partial(quantize, x), None, repeats, cuda)
            if cuda:
                timed("quantize x (kernel)", functools.partial(quantize_rows, x), None, repeats, cuda)
                timed("GELU + quantize x (kernel)", functools.partial(quantize_rows, x, gelu=True), None, repeats,
                      cuda)
                got, ref = quantize_rows(x, gelu=True), quantize_rows_reference(x, gelu=True)
                differ = (got.values.float() != ref.values.float()).float().mean().item()
                logger.info("    GELU + quantize against the torch definition: %.3f%% of the e4m3 values differ, "
                            "dequantized max abs error %.3g, scales max relative error %.3g", 100 * differ,
                            (got.dequantize().float() - ref.dequantize().float()).abs().max().item(),
                            ((got.scale - ref.scale).abs() / ref.scale).max().item())
                if name in ("qkv", "fc2"):  # the two row widths: the launch sweep
                    for rows, warps in ((1, 1), (1, 2), (1, 4), (1, 8), (2, 4)):
                        timed(f"  {rows} rows/program, {warps} warps", functools.partial(
                            quantize_rows, x, gelu=True, rows_per_program=rows, num_warps=warps), None, repeats,
                            cuda)
    if not cuda:
        return
    # a block's MLP and norm + qkv, as the blocks run them
    for layer in layers.values():
        layer.float8_weight = Float8Weight.from_linear(layer)
    x = torch.randn(2, tokens // 2, HIDDEN, device=device, dtype=dtype)
    shift, scale = (torch.randn(2, 6, HIDDEN, device=device, dtype=dtype) * 0.3).chunk(6, dim=1)[:2]
    fc1, fc2, qkv = layers["fc1"], layers["fc2"], layers["qkv"]
    with torch.no_grad():
        h = layer_norm_modulate(x, shift, scale, EPS)
        hidden = F.gelu(F.linear(h.float(), fc1.weight.float(), fc1.bias.float()), approximate="tanh")
        want = F.linear(hidden, fc2.weight.float(), fc2.bias.float())
        logger.info("a block's norm + MLP, tokens %s:", list(x.shape))
        timed("bf16 (norm kernel, GELU epilogue)",
              lambda: mlp_gelu_tanh(layer_norm_modulate(x, shift, scale, EPS), fc1, fc2), want, repeats, cuda)
        timed("float8 (quantize in the kernels)",
              lambda: mlp_gelu_tanh(layer_norm_modulate_float8(x, shift, scale, EPS), fc1, fc2), want, repeats, cuda)
        for rows, warps in ((1, 1), (1, 2), (2, 2), (2, 4), (4, 4)):
            timed(f"  norm + modulate -> float8 rows, {rows} rows/program, {warps} warps",
                  lambda r=rows, w=warps: layer_norm_modulate_float8(
                      x, shift, scale, EPS, rows_per_program=r, num_warps=w).values, None, repeats, cuda)
        want = qkv(h)
        logger.info("a block's norm + qkv, tokens %s:", list(x.shape))
        timed("bf16", lambda: qkv(layer_norm_modulate(x, shift, scale, EPS)), want, repeats, cuda)
        timed("float8", lambda: linear(qkv, layer_norm_modulate_float8(x, shift, scale, EPS)), want, repeats, cuda)
        # the self-attention's gate pass, then the cross-attention's q linear (a [C, C] linear: proj's shape)
        q_linear = layers["proj"]
        y, residual = torch.randn_like(x), torch.randn_like(x)
        gate = torch.randn(2, 1, HIDDEN, device=device, dtype=dtype) * 0.3
        want = q_linear(apply_gate_and_add(y, gate, residual)[0])
        logger.info("a block's gate + residual (product kept) + cross-attention q linear, tokens %s:", list(x.shape))
        timed("bf16", lambda: q_linear(apply_gate_and_add(y, gate, residual)[0]), want, repeats, cuda)
        timed("float8 (the gate writes the rows)", lambda: linear(
            q_linear, apply_gate_and_add_float8(y, gate, residual, product=True)[2]), want, repeats, cuda)
        timed("  gate kernel alone", functools.partial(apply_gate_and_add, y, gate, residual), None, repeats, cuda)
        timed("  float8 gate kernel alone", functools.partial(
            apply_gate_and_add_float8, y, gate, residual, product=True), None, repeats, cuda)


def bench_temporal_attention(scale: float, device: str, dtype: torch.dtype, repeats: int, cuda: bool) -> None:
    """An STDiT3 temporal block's ``temporal_attention`` (regroup, qkv, qk-norm, RoPE, attention, proj)
    on the torch path and fused, against the float32 block."""
    frames, positions = 15, max(2, int(1590 * scale))
    torch.manual_seed(0)
    exact = STDiT3Block(HIDDEN, 16, MLP_HIDDEN, qk_norm=True, temporal=True).to(device).eval()
    with torch.no_grad():
        for norm in (exact.attn.q_norm, exact.attn.k_norm):
            norm.weight.uniform_(0.5, 1.5)
    block = STDiT3Block(HIDDEN, 16, MLP_HIDDEN, qk_norm=True, temporal=True).to(device, dtype).eval()
    block.load_state_dict(exact.state_dict())
    h = torch.randn(2, frames * positions, HIDDEN, device=device)
    rope = RotaryEmbedding(72).to(device).cos_sin(frames, device)
    with torch.no_grad():
        want = exact.temporal_attention(h, frames, rope)
    h = h.to(dtype)

    def run(fused: bool, fn: Callable[..., torch.Tensor] = block.temporal_attention) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            block.fused_kernel = fused
            with torch.no_grad():
                return fn(h, frames, rope)
        return call

    logger.info("STDiT3 temporal attention, [2, %d x %d, %d]:", frames, positions, HIDDEN)
    timed("torch path (eager)", run(False), want, repeats, cuda)
    if cuda:
        timed("torch path (compiled)", run(False, torch.compile(block.temporal_attention)), want, repeats, cuda)
    timed("fused kernel", run(True), want, repeats, cuda)
    if not cuda:
        return
    with torch.no_grad():
        qkv = block.attn.qkv(h.view(2, frames, positions, HIDDEN))
    weights = block.attn.q_norm.weight, block.attn.k_norm.weight
    reference = temporal_attention_reference(qkv, 16, *weights, rope)
    logger.info("  the kernel alone on the qkv projection (error against temporal_attention_reference):")
    for heads, warps in ((1, 1), (1, 2), (1, 4), (1, 8), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8)):
        timed(f"{heads} heads/program, {warps} warps", functools.partial(
            fused_temporal_attention, qkv, 16, *weights, rope, heads_per_program=heads, num_warps=warps),
            reference, repeats, cuda)


def bench_cross_attention(scale: float, device: str, dtype: torch.dtype, repeats: int, cuda: bool) -> None:
    """STDiT3's cross-attention at Open-Sora's 480p 2s token shape (``[2, 15 x 1590, 1152]``, 16 heads of
    72) to captions of several lengths, unfolded (q_linear, the attention kernel, proj) and folded into its
    projections where that applies (on the GPU cuBLAS GEMMs around :mod:`videosys.kernels.folded_attention`'s
    softmax kernel), each against the unfolded float32 module; then the softmax kernel's launch settings."""
    tokens = max(8, int(15 * 1590 * scale))
    torch.manual_seed(0)
    exact = CrossAttention(HIDDEN, 16).to(device).eval()
    exact.fold_short_context = False  # the reference: the module as the checkpoint's authors wrote it
    module = CrossAttention(HIDDEN, 16).to(device, dtype).eval()
    module.load_state_dict(exact.state_dict())
    x = torch.randn(2, tokens, HIDDEN, device=device)
    x_low = x.to(dtype)
    logger.info("STDiT3 cross-attention, [2, %d, %d] to a caption of L tokens (the folded module launches ~15 "
                "kernels, and alone the host's launches outlast them: 'GPU' is their time per call):",
                tokens, HIDDEN)
    for length in (12, 33, 48, 72, 120):
        y = torch.randn(2, length, HIDDEN, device=device)
        with torch.no_grad():
            want = exact(x, y)
        y_low = y.to(dtype)

        def run(fold: bool, y: torch.Tensor = y_low) -> Callable[[], torch.Tensor]:
            def call() -> torch.Tensor:
                module.fold_short_context = fold
                with torch.no_grad():
                    return module(x_low, y)
            return call

        for fold in (False, True):
            module.fold_short_context = fold
            with torch.no_grad():
                if fold and not module.folds(x_low, length):
                    continue
            name = f"L={length} {'folded' if fold else 'unfolded'}"
            timed(name, run(fold), want, repeats, cuda)
            if cuda:
                logger.info("  %-28s %8.3f ms GPU", "", kernel_ms_per_call(run(fold)))
        with torch.no_grad():  # folds on CUDA only where autograd records nothing
            if not module.folds(x_low, length):
                continue
        # as in a request: the caption's folded context kept from the first call (PreparedCaption), and with
        # --float8 the tokens' e4m3 rows (in the model made by the gate kernel before it) feeding the first
        # GEMM, and optionally e4m3 probabilities feeding the second (not the default: less accurate)
        with torch.no_grad():
            k, v = module.kv_linear(y_low).chunk(2, dim=-1)
            context = fold_context(k, v, module.q_linear, module.proj, 16, kernel=folded_kernel_path(
                x_low, 16, length, module.parameters()))
        rows = quantize_rows(x_low) if cuda and float8_unavailable(x_low.device) is None else None
        variants = [("folded, kept", None, False), ("folded, kept, float8", rows, False),
                    ("kept, float8, e4m3 probs", rows, True)]
        for label, x_rows, e4m3 in variants:
            if "float8" in label and x_rows is None:
                continue
            kept = functools.partial(attend_folded, x_low, context, x_rows, float8_probabilities=e4m3)
            timed(f"L={length} {label}", kept, want, repeats, cuda)
            if cuda:
                logger.info("  %-28s %8.3f ms GPU", "", kernel_ms_per_call(kept))
    if not cuda:
        return
    for length in (12, 18, 33):
        width = folded_row_width(16, length)
        logger.info("  the softmax kernel alone (16 heads x %d keys, rows of %d), rows per program / warps:",
                    length, width)
        scores = torch.randn(2, tokens, width, device=device, dtype=dtype)
        bias = torch.zeros(2, 16 * length, device=device)
        for rows, warps in ((4, 4), (1, 1), (1, 2), (2, 1), (2, 2), (8, 8)):
            timed(f"{rows} / {warps}", functools.partial(
                head_softmax_rows, scores, bias, 16, length, 1.0, rows_per_program=rows, num_warps=warps),
                None, repeats, cuda)


def bench_short_self_attention(scale: float, device: str, repeats: int, cuda: bool) -> None:
    """Latte's temporal self-attention (``attn1`` of a temporal block: 2 x 1024 positions of 16 frames, fp16)
    on the torch path and as ``Attention.short_self_attention``, against the float32 module."""
    dtype = torch.float16 if cuda else torch.float32
    sequences, frames = max(2, int(2 * 1024 * scale)), 16
    torch.manual_seed(0)
    exact = Attention(HIDDEN, 16, 72, bias=True).to(device).eval()
    attn = Attention(HIDDEN, 16, 72, bias=True).to(device, dtype).eval()
    attn.load_state_dict(exact.state_dict())
    x = torch.randn(sequences, frames, HIDDEN, device=device)
    with torch.no_grad():
        want = exact(x)
    x = x.to(dtype)

    def run(fused: bool) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            attn.fused_kernel = fused
            with torch.no_grad():
                return attn(x)
        return call

    logger.info("Latte temporal self-attention, [%d, %d, %d] %s:", sequences, frames, HIDDEN, dtype)
    timed("torch path (eager)", run(False), want, repeats, cuda)
    timed("fused kernel", run(True), want, repeats, cuda)


#: token shapes ``[sequences, tokens, C]`` (two videos: two modulation groups) and dtypes of the models
MODULATION_SHAPES = {"Open-Sora 480p 2s": ((2, 15 * 1590, HIDDEN), torch.bfloat16),
                     "Latte 16 x 512 x 512": ((32, 1024, HIDDEN), torch.float16)}


def bench_modulation(scale: float, device: str, repeats: int, cuda: bool) -> None:
    """norm + modulation and gate (+ residual): the torch path and the Triton kernels (CUDA only), each
    against the float32 computation."""
    for name, (shape, dtype) in MODULATION_SHAPES.items():
        shape = (shape[0], max(1, int(shape[1] * scale)), shape[2])
        dtype = dtype if cuda else torch.float32
        x, y = (torch.randn(shape, device=device) for _ in range(2))
        shift, scale_, gate = (torch.randn(2, 6, HIDDEN, device=device) * 0.3).chunk(6, dim=1)[:3]
        want_norm = layer_norm_modulate_reference(x, shift, scale_, EPS)
        want_gate = apply_gate_reference(y, gate, x)
        x, y, shift, scale_, gate = (t.to(dtype) for t in (x, y, shift, scale_, gate))
        logger.info("%s tokens %s %s:", name, list(shape), dtype)
        timed("norm + modulate, torch", functools.partial(layer_norm_modulate_reference, x, shift, scale_, EPS), want_norm,
              repeats, cuda)
        if cuda:
            timed("norm + modulate, kernel", functools.partial(layer_norm_modulate, x, shift, scale_, EPS), want_norm,
                  repeats, cuda)
            for rows, warps in ((1, 1), (1, 2), (2, 2), (2, 4), (4, 4)):
                timed(f"  {rows} rows/program, {warps} warps", functools.partial(
                    layer_norm_modulate, x, shift, scale_, EPS, rows_per_program=rows, num_warps=warps),
                    want_norm, repeats, cuda)
        if cuda:  # the residual add before the MLP's norm (STDiT3 and Latte after their cross-attention)
            want_add = layer_norm_modulate_reference(x + y, shift, scale_, EPS)
            terms = (x, y, shift, scale_)
            timed("add, then the norm kernel", lambda t=terms: layer_norm_modulate(t[0] + t[1], *t[2:], EPS),
                  want_add, repeats, cuda)
            timed("add + norm in one kernel", lambda t=terms: add_layer_norm_modulate(*t, EPS)[1], want_add,
                  repeats, cuda)
        timed("gate + residual, torch", functools.partial(apply_gate_reference, y, gate, x), want_gate, repeats, cuda)
        timed("gate alone, torch", functools.partial(apply_gate_reference, y, gate), None, repeats, cuda)
        if cuda:
            timed("gate + residual, kernel", functools.partial(apply_gate, y, gate, x), want_gate, repeats, cuda)
            timed("gate + residual and gate, kernel", lambda y=y, gate=gate, x=x: apply_gate_and_add(y, gate, x)[0],
                  want_gate, repeats, cuda)
            timed("gate alone, kernel", functools.partial(apply_gate, y, gate), None, repeats, cuda)


def kernel_ms_per_call(fn: Callable[[], torch.Tensor], calls: int = 10) -> float:
    """The GPU's kernel time per call of ``fn`` (torch.profiler, after a warm-up call): what a call costs
    inside a forward, where the host queues ahead of the GPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e3 / calls


def timed(name: str, fn: Callable[[], torch.Tensor], want: torch.Tensor | None, repeats: int, cuda: bool) -> None:
    err = float("nan") if want is None else (fn().float() - want.float()).abs().max().item()
    ms = cuda_event_median_ms(fn, repeats, calls_per_sample=CALLS_PER_SAMPLE) if cuda else float("nan")
    logger.info("  %-28s %8.3f ms   max abs error %.3g", name, ms, err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (a CPU dry run: e.g. 0.01)")
    ap.add_argument("--only", default=None,
                    help="comma-separated sections to run (rms, gelu, temporal, cross, short, modulation, float8; "
                         "default all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:
        logger.warning("no CUDA device: a dry run of the script on the CPU (no times)")
    sections = {
        "rms": lambda: bench_rms(args.scale, device, dtype, args.repeats, cuda),
        "gelu": lambda: bench_gelu_epilogue(tokens, device, dtype, args.repeats, cuda),
        "temporal": lambda: bench_temporal_attention(args.scale, device, dtype, args.repeats, cuda),
        "cross": lambda: bench_cross_attention(args.scale, device, dtype, args.repeats, cuda),
        "short": lambda: bench_short_self_attention(args.scale, device, args.repeats, cuda),
        "modulation": lambda: bench_modulation(args.scale, device, args.repeats, cuda),
        "float8": lambda: bench_fp8(tokens, device, dtype, args.repeats, cuda),
    }
    chosen = list(sections) if args.only is None else [s for s in args.only.split(",") if s]
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        ap.error(f"--only: {', '.join(unknown)} not allowed (allowed: {', '.join(sections)})")
    tokens = max(8, int(MLP_TOKENS * args.scale))
    for name in chosen:
        sections[name]()


def bench_rms(scale: float, device: str, dtype: torch.dtype, repeats: int, cuda: bool) -> None:
    """qk RMS norm over 72-channel rows: torch's forms against the Triton rows kernel."""
    compiled = torch.compile(rms_reference) if cuda else rms_reference
    for name, shape in NORM_SHAPES.items():
        shape = (max(1, int(shape[0] * scale)), *shape[1:])
        x = torch.randn(shape, device=device, dtype=dtype)
        w = torch.rand(shape[-1], device=device, dtype=dtype) + 0.5
        want = rms_reference(x, w)
        logger.info("qk RMS norm, %s %s:", name, list(shape))
        for label, fn in (("reference (float32)", rms_reference), ("F.rms_norm", rms_fused),
                          ("vector_norm", rms_vector_norm), ("reference, torch.compile", compiled)):
            timed(label, functools.partial(fn, x, w), want, repeats, cuda)
        if cuda:
            timed("Triton rows kernel", functools.partial(rms_norm_rows, x, w, EPS), want, repeats, cuda)


def bench_gelu_epilogue(tokens: int, device: str, dtype: torch.dtype, repeats: int, cuda: bool) -> None:
    """The MLP's first linear + tanh GELU: two ops, or one GEMM with cuBLASLt's GELU epilogue."""
    x = torch.randn(tokens, HIDDEN, device=device, dtype=dtype)
    w = torch.randn(MLP_HIDDEN, HIDDEN, device=device, dtype=dtype) * HIDDEN**-0.5
    b = torch.randn(MLP_HIDDEN, device=device, dtype=dtype) * 0.1
    want = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    logger.info("MLP fc1 + tanh GELU, [%d, %d] x [%d, %d]:", tokens, HIDDEN, HIDDEN, MLP_HIDDEN)
    timed("linear, then GELU", lambda: F.gelu(F.linear(x, w, b), approximate="tanh"), want, repeats, cuda)
    timed("linear alone", lambda: F.linear(x, w, b), None, repeats, cuda)
    timed("GELU epilogue (cuBLASLt)", lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), want,
          repeats, cuda)


if __name__ == "__main__":
    main()
