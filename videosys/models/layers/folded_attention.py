"""Cross-attention to a short context, folded into its projections.

With ``L`` context tokens and ``H`` heads of ``D`` channels, head ``h``'s scores are
``(x Wq_h^T + bq_h) K_h^T / sqrt(D)`` and its share of the output projection is ``P_h V_h Wo_h^T``. When the
context is short (``H * L`` at most the query width), the products ``Wq_h^T K_h^T`` (``[C, L]`` per head)
and ``V_h Wo_h^T`` (``[L, C_out]``) are smaller than the projections themselves, so the whole module becomes

    scores = x @ A + c        A = [C, H*L] (every head's Wq_h^T K_h^T), c = its bias row and the key mask
    P      = softmax over each head's L columns
    out    = P @ B + bo       B = [H*L, C_out] (every head's V_h Wo_h^T)

two thin GEMMs over the query tokens instead of the query projection, an attention kernel and the output
projection. It is the same function (exact in real arithmetic; the roundings differ within the dtype's),
made for text-conditioned video DiTs, whose captions are often a few dozen tokens against tens of
thousands of video tokens. On the GPU the two products are cuBLAS GEMMs around one Triton pass
(:mod:`videosys.kernels.folded_attention`: the scale, the bias row and the per-head softmax in place, the
output bias folded into the second GEMM).

``A``, ``B`` and ``c`` depend on the context alone: :func:`fold_context` makes them (a
:class:`FoldedContext`), :func:`attend_folded` applies them, and a :class:`FoldedContextCache` keeps each
module's for as long as its context stays (a request's caption: made on its first denoiser call).

A module that can fold holds a boolean ``fold_short_context`` attribute (default ``True``);
:func:`use_folded_cross_attention` sets it on every such module of a model (``False``: always the unfolded
path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels.float8 import (
    FLOAT8_DTYPE,
    Float8Rows,
    Float8Weight,
    float8_linear,
)
from videosys.kernels.folded_attention import (
    PROB_SCALE,
    folded_attention_kernel_applies,
    folded_row_width,
    head_softmax_rows,
)

__all__ = [
    "FoldedContext",
    "FoldedContextCache",
    "attend_folded",
    "attend_module_folded",
    "fold_context",
    "folded_cross_attention",
    "folded_kernel_path",
    "folds",
    "use_folded_cross_attention",
]


def folds(x: torch.Tensor, heads: int, keys: int, params: Iterable[torch.Tensor] = (), *,
          kernels: bool = True) -> bool:
    """Whether a cross-attention of query tokens like ``x`` ``[..., C]`` (``heads`` heads) to ``keys``
    context tokens runs folded: where its thin GEMMs do no more work than the query and output projections
    they replace, ``0 < heads * keys <= C`` (16 heads over 1152 channels: captions of up to 72 tokens); on
    CUDA also only with the module's fused kernels allowed (``kernels``: folded torch ops measured no faster
    than the unfolded module there) and where
    :func:`videosys.kernels.folded_attention.folded_attention_kernel_applies` (half precision, Triton, no
    autograd recording ``x`` or the module's ``params``)."""
    if x.is_cuda:
        return kernels and folded_attention_kernel_applies(x, heads, keys, params)
    return 0 < heads * keys <= x.shape[-1]


@dataclass(eq=False)
class FoldedContext:
    """One module's cross-attention folded over one context: ``A^T`` and ``B`` (module docstring) and the
    scores' float32 bias row, laid out for the path that uses them (``kernel``: the GPU path's rows padded
    to :func:`~videosys.kernels.folded_attention.folded_row_width`, ``B`` with the output bias as its row
    ``H*L``; else ``A^T`` ``[G, H*L, C]`` and ``B`` ``[G, H*L, C_out]``). Made by :func:`fold_context`; kept
    for a whole request by :class:`FoldedContextCache`."""

    a_t: torch.Tensor
    b: torch.Tensor
    bias: torch.Tensor  # float32 [G, H*L]: the query bias's share (scaled) and -inf on masked keys
    out_bias: torch.Tensor | None
    heads: int
    keys: int
    scale: float
    kernel: bool
    _float8: tuple[list[Float8Weight], list[Float8Weight]] | None = None

    @property
    def groups(self) -> int:
        return self.a_t.shape[0]

    def float8_operands(self) -> tuple[list[Float8Weight], list[Float8Weight]]:
        """Per group, ``A^T`` (``[W, C]``, a scale per score column) and ``B^T`` (``[C_out, W]``, a scale per
        output channel, the output bias as its bias and its bias column zeroed) as e4m3 weights of the
        float8 GEMMs (GPU path only); made on first use and kept."""
        if not self.kernel:
            raise ValueError("float8 operands exist on the GPU path only (kernel=True)")
        if self._float8 is None:
            columns = self.heads * self.keys
            b_t = self.b.transpose(1, 2).contiguous()  # [G, C_out, W]
            b_t[:, :, columns] = 0  # the bias row of the half-precision path: float8 adds the bias in the GEMM
            self._float8 = ([Float8Weight.from_matrix(a) for a in self.a_t],
                            [Float8Weight.from_matrix(b, self.out_bias) for b in b_t])
        return self._float8


def fold_context(
    k: torch.Tensor,
    v: torch.Tensor,
    q_layer: nn.Linear,
    out_layer: nn.Linear,
    heads: int,
    mask: torch.Tensor | None = None,
    *,
    kernel: bool,
) -> FoldedContext:
    """The folded operands of ``out_layer(attention(q_layer(x), k, v))`` for context keys / values ``k``,
    ``v`` ``[G, L, H*D]`` (already projected) and boolean ``mask`` ``[G, L]`` (``True`` = valid key) or
    ``None``; ``kernel``: laid out for the GPU path (:func:`attend_folded`)."""
    if k.ndim != 3 or k.shape[2] % heads or v.shape != k.shape:
        raise ValueError(f"k and v must both be [G, L, {heads} x head_dim], got {list(k.shape)} and {list(v.shape)}")
    g, length = k.shape[:2]
    head_dim = k.shape[2] // heads
    if q_layer.out_features != heads * head_dim:
        raise ValueError(f"q_layer maps {q_layer.in_features} -> {q_layer.out_features}, the keys have "
                         f"{heads * head_dim} channels")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (g, length)):
        raise ValueError(f"mask must be boolean [{g}, {length}], got {mask.dtype} {list(mask.shape)}")
    a_t, b, bias = _fold(k, v, q_layer, out_layer, heads, mask)
    columns = heads * length
    if kernel:
        # rows [W]: the H*L scores, the bias column, padding; B gets the output bias as its row H*L (one copy
        # each: A^T padded with zero rows, read transposed by the GEMM; B with the bias row and zeros)
        width = folded_row_width(heads, length)
        a_t = F.pad(a_t, (0, 0, 0, width - columns))
        out_bias = out_layer.bias if out_layer.bias is not None else b.new_zeros(out_layer.out_features)
        b = torch.cat([b, out_bias.to(b.dtype).expand(g, 1, -1),
                       b.new_zeros(g, width - columns - 1, out_layer.out_features)], dim=1)
    return FoldedContext(a_t, b, bias.view(g, columns), out_layer.bias, heads, length, head_dim**-0.5, kernel)


def attend_folded(x: torch.Tensor, context: FoldedContext, x_rows: Float8Rows | None = None, *,
                  float8_probabilities: bool = False) -> torch.Tensor:
    """The folded cross-attention of ``x`` ``[G, N, C]`` over ``context``: ``[G, N, C_out]`` in ``x``'s
    dtype. On the GPU path (``context.kernel``) two cuBLAS GEMMs around one Triton pass (scale, bias,
    per-head softmax: :func:`videosys.kernels.folded_attention.head_softmax_rows`); else two batched GEMMs
    and torch's softmax.

    ``x_rows`` (``x`` as float8 rows, ``--float8``; GPU path): the first GEMM reads e4m3 operands (``A``
    quantized once per context). ``float8_probabilities``: the second too, from e4m3 probabilities the
    softmax writes. Not the default: at Open-Sora's 480p shape on an H200 it saved 0.6 ms of a 171 ms call
    and took the float8 video's PSNR against bf16 from 38.7 to 37.0 dB (docs/benchmarks.md, twelfth
    session)."""
    g, n, c = x.shape
    if g != context.groups or c != context.a_t.shape[2] or x.dtype != context.a_t.dtype:
        raise ValueError(f"x must be [{context.groups}, N, {context.a_t.shape[2]}] {context.a_t.dtype} for this "
                         f"folded context, got {x.dtype} {list(x.shape)}")
    heads, length, bias, scale = context.heads, context.keys, context.bias, context.scale
    if not context.kernel:
        scores = torch.baddbmm(bias[:, None].to(x.dtype), x, context.a_t.transpose(1, 2), alpha=scale)
        probs = scores.view(g, n, heads, length).softmax(dim=-1).view(g, n, heads * length)
        if context.out_bias is None:
            return torch.bmm(probs, context.b)
        return torch.baddbmm(context.out_bias, probs, context.b)
    if x_rows is None:
        scores = head_softmax_rows(torch.matmul(x, context.a_t.transpose(1, 2)), bias, heads, length, scale)
        return torch.bmm(scores, context.b)
    if x_rows.shape != x.shape:
        raise ValueError(f"x_rows must hold x's rows {list(x.shape)}, got {list(x_rows.shape)}")
    a8, b8 = context.float8_operands()
    width = context.a_t.shape[1]
    scores = x.new_empty(g, n, width)
    for i in range(g):
        float8_linear(x_rows.select(i), a8[i], out=scores[i])
    if not float8_probabilities:
        return torch.bmm(head_softmax_rows(scores, bias, heads, length, scale), context.b)
    probs = head_softmax_rows(scores, bias, heads, length, scale,
                              out=torch.empty(g, n, width, dtype=FLOAT8_DTYPE, device=x.device))
    prob_scale = torch.full((n, 1), 1.0 / PROB_SCALE, dtype=torch.float32, device=x.device)
    out = x.new_empty(g, n, b8[0].weight.shape[0])
    for i in range(g):
        float8_linear(Float8Rows(probs[i], prob_scale, x.dtype), b8[i], out=out[i])
    return out


def folded_kernel_path(x: torch.Tensor, heads: int, keys: int, params: Iterable[torch.Tensor] = ()) -> bool:
    """Whether a folded cross-attention of tokens like ``x`` runs the GPU path (cuBLAS GEMMs around the
    Triton softmax, float8 GEMMs when given float8 rows): where
    :func:`videosys.kernels.folded_attention.folded_attention_kernel_applies`."""
    return folded_attention_kernel_applies(x, heads, keys, params)


def attend_module_folded(
    module: nn.Module,
    x: torch.Tensor,
    keys: int,
    keys_values: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    q_layer: nn.Linear,
    out_layer: nn.Linear,
    heads: int,
    mask: torch.Tensor | None = None,
    *,
    cache: FoldedContextCache | None = None,
    x_rows: Float8Rows | None = None,
) -> torch.Tensor:
    """A module's folded cross-attention of ``x`` ``[G, N, C]`` over a context of ``keys`` tokens: its
    folded form taken from ``cache`` (made there on a miss) or made now from ``keys_values()`` (the
    context's projected keys and values ``[G, L, H*D]``), then :func:`attend_folded` (with ``x_rows`` on
    the GPU path)."""
    kernel = folded_kernel_path(x, heads, keys, module.parameters())

    def fold() -> FoldedContext:
        k, v = keys_values()
        return fold_context(k, v, q_layer, out_layer, heads, mask, kernel=kernel)

    context = fold() if cache is None else cache.context(module, x, kernel, fold)
    return attend_folded(x, context, x_rows if kernel else None)


def folded_cross_attention(
    x: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_layer: nn.Linear,
    out_layer: nn.Linear,
    heads: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out_layer(attention(q_layer(x), k, v))`` for ``x`` ``[G, N, C]`` attending to its group's context
    keys / values ``k``, ``v`` ``[G, L, H*D]`` (already projected), folded (module docstring): the context
    folded (:func:`fold_context`) for the path that applies, then :func:`attend_folded`.

    ``mask``: boolean ``[G, L]`` (``True`` = valid key) or ``None``. A group with no valid key gives
    ``out_layer``'s bias alone (the attention's zeros, as :func:`videosys.models.layers.attention.matmul_attention`
    defines that case). Returns ``[G, N, C_out]`` in ``x``'s dtype.
    """
    if q_layer.in_features != x.shape[-1]:
        raise ValueError(f"q_layer maps {q_layer.in_features} -> {q_layer.out_features}, the tokens have "
                         f"{x.shape[-1]} channels")
    kernel = folded_kernel_path(x, heads, k.shape[1], (*q_layer.parameters(), *out_layer.parameters()))
    return attend_folded(x, fold_context(k, v, q_layer, out_layer, heads, mask, kernel=kernel))


def _fold(k: torch.Tensor, v: torch.Tensor, q_layer: nn.Linear, out_layer: nn.Linear, heads: int,
          mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A^T`` ``[G, H*L, C]`` (row ``h*L + l`` = ``K_h[l] Wq_h``), ``B`` ``[G, H*L, C_out]`` (row ``h*L + l``
    = ``V_h[l] Wo_h^T``), each rounded once to the model dtype, and the scores' float32 bias row
    ``[G, 1, H*L]``: the query bias's share ``bq_h K_h^T``, scaled, and ``-inf`` on masked keys (none for a
    group without a valid key, whose ``B`` is zeroed instead)."""
    g, length, inner = k.shape
    head_dim = inner // heads
    c = q_layer.in_features
    k_heads = k.view(g, length, heads, head_dim).transpose(1, 2)  # [G, H, L, D]
    v_heads = v.view(g, length, heads, head_dim).transpose(1, 2)
    a_t = torch.matmul(k_heads, q_layer.weight.view(heads, head_dim, c)).reshape(g, heads * length, c)
    out_weight = out_layer.weight.view(out_layer.out_features, heads, head_dim).permute(1, 2, 0)
    b = torch.matmul(v_heads, out_weight).reshape(g, heads * length, out_layer.out_features)
    if q_layer.bias is not None:
        q_bias = q_layer.bias.float().view(heads, head_dim, 1)
        bias = torch.matmul(k_heads.float(), q_bias).reshape(g, 1, heads * length) * head_dim**-0.5
    else:
        bias = torch.zeros(g, 1, heads * length, dtype=torch.float32, device=k.device)
    if mask is not None:
        has_keys = mask.any(dim=1, keepdim=True)  # [G, 1]; stays on the device (no host sync)
        keep = (mask | ~has_keys)[:, None, :].expand(g, heads, length).reshape(g, 1, heads * length)
        bias = bias.masked_fill(~keep, float("-inf"))
        b = b * has_keys[:, :, None].to(b.dtype)  # a group with no valid key: its attention output is zero
    return a_t, b, bias


class FoldedContextCache:
    """The :class:`FoldedContext` of each module over one fixed context (a request's caption), made on the
    module's first call and reused by its later ones: the folding's small GEMMs and copies (and the
    context's key / value projection) then run once per request instead of once per call.

    An entry is remade when its module's parameters change (storage, or in-place version where autograd
    tracks one), or the tokens' device, dtype or path do. The context itself is the caller's promise: one
    cache per context (and key mask)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[nn.Module, tuple[Any, ...], FoldedContext]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def context(self, module: nn.Module, x: torch.Tensor, kernel: bool,
                make: Callable[[], FoldedContext]) -> FoldedContext:
        """``module``'s folded context for tokens like ``x`` on the path ``kernel``: the kept one, or
        ``make()`` kept."""
        # (parameters made under inference mode track no version: their storage stands for them)
        stamp = (x.device, x.dtype, kernel,
                 tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in module.parameters()))
        entry = self._entries.get(id(module))
        if entry is None or entry[0] is not module or entry[1] != stamp:
            entry = (module, stamp, make())
            self._entries[id(module)] = entry
        return entry[2]


def use_folded_cross_attention(model: nn.Module, enabled: bool = True) -> int:
    """Let (``enabled``) or stop every module of ``model`` that can fold a short-context cross-attention
    from doing so; returns the number of such modules."""
    modules = [m for m in model.modules() if hasattr(m, "fold_short_context")]
    for module in modules:
        module.fold_short_context = bool(enabled)
    return len(modules)
