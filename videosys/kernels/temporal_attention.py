"""Attention over frames in one Triton pass, read straight from the frame-major ``qkv`` projection.

A DiT's temporal attention (Open-Sora's STDiT3: 15 frames at 2 s 480p) attends, for every spatial position
and head, over ``T`` frames only. Its FLOPs are small; its cost is moving data. The torch path regroups the
``[B, T, S, C]`` tokens as ``[B*S, T, C]`` and back, normalises q and k (RMS over ``head_dim``), rotates
them (RoPE over the frame index), and runs two batched matmuls whose ``15 x 15`` tiles leave tensor cores
mostly idle: about 1.6 ms per Open-Sora temporal block on an H200, where reading q, k, v and writing the
output once takes about 0.15 ms (docs/benchmarks.md, sixth session).

:func:`fused_temporal_attention` does all of it in one kernel. One program takes one ``(sample, position)``
and one or a few heads: it loads each head's ``T x head_dim`` tiles of q, k and v from the ``qkv`` GEMM's
output where they lie (rows ``S * 3C`` apart), normalises and rotates q and k in registers (held as their
even and odd channels, so RoPE's pair rotation needs no shuffle), forms the ``T x T`` scores, softmaxes them
in float32 and writes ``softmax(q k^T / sqrt(d)) v`` into a frame-major ``[B, T, S, C]`` output, ready for
the output projection.

Numerics follow the torch path's rounding points: the normalised q/k and the rotated q/k are rounded to the
input dtype, as ``F.rms_norm`` and :func:`videosys.models.layers.rope.apply_rotary` return them, and the
softmax weights are rounded to it before the product with v; the products of those rounded values are
exact and summed in float32, the scores and the softmax are float32 (the torch path rounds its scores to
the input dtype), and the output is rounded once. Outputs agree within the dtype's rounding
(tests/test_kernels.py in Triton's CPU interpreter, which multiplies in float32 and truncates where the GPU
rounds; scripts/bench_kernels.py on the GPU).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from videosys.kernels.common import (
    HALF_DTYPES,
    autograd_off,
    next_power_of_2,
    triton_available,
)
from videosys.models.layers.rope import apply_rotary

__all__ = [
    "MAX_FRAMES",
    "fused_temporal_attention",
    "fused_temporal_attention_applies",
    "temporal_attention_reference",
]

#: The longest frame axis the kernel takes (its ``T x T`` scores and ``T x head_dim`` tiles stay in
#: registers); longer ones keep the torch path.
MAX_FRAMES = 64
#: The widest head the kernel takes (one power-of-two tile of channels).
MAX_HEAD_DIM = 128
#: The launch that measured fastest at Open-Sora's 480p 2s shape on an H200, timed back to back as a forward
#: queues it: one head with 2 warps 0.253 ms (2 heads / 2 warps 0.291, 1 / 1 0.308, 1 / 4 0.284;
#: ``python scripts/bench_kernels.py --only temporal``, docs/benchmarks.md, tenth session).
DEFAULT_HEADS_PER_PROGRAM = 1
DEFAULT_NUM_WARPS = 2

RopeTables = tuple[torch.Tensor, torch.Tensor] | None


def fused_temporal_attention_applies(
    x: torch.Tensor, frames: int, head_dim: int, params: Iterable[torch.Tensor] = ()
) -> bool:
    """Whether :func:`fused_temporal_attention` takes tokens like ``x`` over ``frames`` frames: a CUDA
    tensor in fp16 / bf16, ``2 <= frames <=`` :data:`MAX_FRAMES`, ``head_dim`` at most
    :data:`MAX_HEAD_DIM` and even (RoPE pairs), Triton installed, and autograd recording nothing for ``x``
    and the attention's ``params`` (:func:`autograd_off`)."""
    return (
        x.is_cuda
        and triton_available()
        and x.dtype in HALF_DTYPES
        and 2 <= frames <= MAX_FRAMES
        and head_dim <= MAX_HEAD_DIM
        and head_dim % 2 == 0
        and autograd_off(x, params=params)
    )


def _check(qkv: torch.Tensor, num_heads: int, weights: tuple[torch.Tensor | None, ...], rope: RopeTables) -> int:
    """Validate the arguments of the two implementations; returns ``head_dim``."""
    if qkv.ndim != 4 or qkv.shape[-1] % (3 * num_heads) != 0:
        raise ValueError(f"qkv must be [B, T, S, 3 * heads * head_dim] with heads={num_heads}, "
                         f"got {list(qkv.shape)}")
    head_dim = qkv.shape[-1] // (3 * num_heads)
    for name, weight in zip(("q_weight", "k_weight"), weights):
        if weight is not None and tuple(weight.shape) != (head_dim,):
            raise ValueError(f"{name} must be [{head_dim}], got {list(weight.shape)}")
    if rope is not None:
        for table in rope:
            if tuple(table.shape) != (qkv.shape[1], head_dim):
                raise ValueError(f"rope tables must be [frames, head_dim] = {[qkv.shape[1], head_dim]}, "
                                 f"got {list(table.shape)}")
    return head_dim


def temporal_attention_reference(
    qkv: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    rope: RopeTables = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """What :func:`fused_temporal_attention` computes, in torch ops (float32 scores and softmax).

    ``qkv`` ``[B, T, S, 3C]`` (frame-major, as the ``qkv`` linear returns it) -> ``[B, T, S, C]``.
    """
    head_dim = _check(qkv, num_heads, (q_weight, k_weight), rope)
    b, t, s, _ = qkv.shape
    q, k, v = qkv.view(b, t, s, 3, num_heads, head_dim).permute(3, 0, 2, 4, 1, 5).unbind(0)  # [B, S, H, T, d]
    if q_weight is not None:
        q = F.rms_norm(q, (head_dim,), q_weight.to(q.dtype), eps)
    if k_weight is not None:
        k = F.rms_norm(k, (head_dim,), k_weight.to(k.dtype), eps)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * head_dim**-0.5
    weights = scores.softmax(dim=-1).to(v.dtype).float()  # rounded as the kernel rounds them on the GPU
    out = torch.matmul(weights, v.float()).to(v.dtype)  # [B, S, H, T, d]
    return out.permute(0, 3, 1, 2, 4).reshape(b, t, s, num_heads * head_dim)


@torch.compiler.disable
def fused_temporal_attention(
    qkv: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    rope: RopeTables = None,
    eps: float = 1e-6,
    *,
    heads_per_program: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Attention over the frame axis of ``qkv`` ``[B, T, S, 3C]`` (frame-major; ``C = heads * head_dim``,
    the last axis ``q | k | v``, each ``heads x head_dim``) -> ``[B, T, S, C]``, in one Triton kernel.

    ``q_weight`` / ``k_weight``: RMS-norm scales ``[head_dim]`` for q / k (``None``: no norm); ``rope``:
    float32 ``(cos, sin)`` ``[T, head_dim]`` tables of interleaved channel pairs (``None``: no rotation).
    ``heads_per_program`` / ``num_warps``: launch tuning (default :data:`DEFAULT_HEADS_PER_PROGRAM` heads
    where they divide ``num_heads``, else one; :data:`DEFAULT_NUM_WARPS` warps).

    Only for inputs :func:`fused_temporal_attention_applies` accepts (the Triton interpreter also runs it
    on CPU tensors, for tests). Outside ``torch.compile``'s graphs (a graph break): Inductor compiles the
    ops around it.
    """
    head_dim = _check(qkv, num_heads, (q_weight, k_weight), rope)
    if qkv.stride(-1) != 1:
        raise ValueError("qkv's channels must be contiguous (the qkv linear's output is)")
    b, t, s, three_c = qkv.shape
    if t > MAX_FRAMES:
        raise ValueError(f"fused temporal attention takes at most {MAX_FRAMES} frames, got {t}")
    c = three_c // 3
    out = torch.empty((b, t, s, c), device=qkv.device, dtype=qkv.dtype)
    if out.numel() == 0:
        return out
    if num_warps is None:
        num_warps = DEFAULT_NUM_WARPS
    if heads_per_program is None:
        heads_per_program = DEFAULT_HEADS_PER_PROGRAM if num_heads % DEFAULT_HEADS_PER_PROGRAM == 0 else 1
    if num_heads % heads_per_program:
        raise ValueError(f"heads_per_program={heads_per_program} must divide the {num_heads} heads")
    dummy = qkv  # an unused pointer argument (the kernel's constexpr flags skip it)
    # one angle per channel pair (the tables repeat it for both channels of the pair)
    cos, sin = (table[:, ::2].contiguous() for table in rope) if rope is not None else (dummy, dummy)
    _kernel()[(b * s * num_heads // heads_per_program,)](
        qkv, out,
        dummy if q_weight is None else q_weight, dummy if k_weight is None else k_weight,
        cos, sin,
        s, num_heads, t,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        eps, 1.0 / math.sqrt(head_dim),
        HEAD_DIM=head_dim, Q_NORM=q_weight is not None, K_NORM=k_weight is not None, ROPE=rope is not None,
        BLOCK_T=max(16, next_power_of_2(t)), BLOCK_P=max(16, next_power_of_2(head_dim // 2)),
        HEADS_PER_PROGRAM=heads_per_program,
        DOT_FP32=qkv.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps,
    )
    return out


def _kernel() -> Any:
    """The Triton kernel (its module, the only one importing Triton, is imported on first use)."""
    from videosys.kernels.temporal_attention_triton import temporal_attention_kernel

    return temporal_attention_kernel
