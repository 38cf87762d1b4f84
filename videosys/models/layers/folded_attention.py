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

A module that can fold holds a boolean ``fold_short_context`` attribute (default ``True``);
:func:`use_folded_cross_attention` sets it on every such module of a model (``False``: always the unfolded
path).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels.folded_attention import (
    folded_attention_kernel_applies,
    folded_row_width,
    head_softmax_rows,
)

__all__ = ["folded_cross_attention", "folds", "use_folded_cross_attention"]


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
    keys / values ``k``, ``v`` ``[G, L, H*D]`` (already projected), folded (module docstring): on the GPU
    path two cuBLAS GEMMs around one Triton pass (scale, bias, per-head softmax:
    :func:`videosys.kernels.folded_attention.head_softmax_rows`), else two batched GEMMs and torch's softmax.

    ``mask``: boolean ``[G, L]`` (``True`` = valid key) or ``None``. A group with no valid key gives
    ``out_layer``'s bias alone (the attention's zeros, as :func:`videosys.models.layers.attention.matmul_attention`
    defines that case). Returns ``[G, N, C_out]`` in ``x``'s dtype.
    """
    g, n, c = x.shape
    length = k.shape[1]
    head_dim = k.shape[2] // heads
    if k.shape != (g, length, heads * head_dim) or v.shape != k.shape:
        raise ValueError(f"k and v must both be [{g}, L, {heads} x head_dim], got {list(k.shape)} and {list(v.shape)}")
    if q_layer.in_features != c or q_layer.out_features != heads * head_dim:
        raise ValueError(f"q_layer maps {q_layer.in_features} -> {q_layer.out_features}, the tokens have {c} "
                         f"channels and the keys {heads * head_dim}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (g, length)):
        raise ValueError(f"mask must be boolean [{g}, {length}], got {mask.dtype} {list(mask.shape)}")
    a_t, b, bias = _fold(k, v, q_layer, out_layer, heads, mask)
    scale = head_dim**-0.5
    columns = heads * length
    if folded_attention_kernel_applies(x, heads, length, (*q_layer.parameters(), *out_layer.parameters())):
        # scores [G, N, W]: the H*L scores, the bias column, padding; B gets the output bias as its row H*L
        # (one copy each: A^T padded with zero rows, read transposed by the GEMM; B with the bias row and zeros)
        width = folded_row_width(heads, length)
        a_rows = F.pad(a_t, (0, 0, 0, width - columns))
        out_bias = out_layer.bias if out_layer.bias is not None else b.new_zeros(out_layer.out_features)
        b_rows = torch.cat([b, out_bias.to(b.dtype).expand(g, 1, -1),
                            b.new_zeros(g, width - columns - 1, out_layer.out_features)], dim=1)
        scores = head_softmax_rows(torch.matmul(x, a_rows.transpose(1, 2)), bias.view(g, columns), heads, length,
                                   scale)
        return torch.bmm(scores, b_rows)
    scores = torch.baddbmm(bias.to(x.dtype), x, a_t.transpose(1, 2), alpha=scale)
    probs = scores.view(g, n, heads, length).softmax(dim=-1).view(g, n, columns)
    if out_layer.bias is None:
        return torch.bmm(probs, b)
    return torch.baddbmm(out_layer.bias, probs, b)


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


def use_folded_cross_attention(model: nn.Module, enabled: bool = True) -> int:
    """Let (``enabled``) or stop every module of ``model`` that can fold a short-context cross-attention
    from doing so; returns the number of such modules."""
    modules = [m for m in model.modules() if hasattr(m, "fold_short_context")]
    for module in modules:
        module.fold_short_context = bool(enabled)
    return len(modules)
