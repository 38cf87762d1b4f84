"""Float8 linears in the DiT blocks (opt-in): which linears, their e4m3 weights, and the calls.

A block that can run float8 holds a boolean ``float8`` attribute (default ``False``) and lists the linears
that then read :class:`~videosys.kernels.float8.Float8Rows` in ``float8_linears()``: the ones fed by its
norm + modulation (self-attention ``qkv``, the MLP's first linear) and the MLP's second linear (fed by the
GELU + quantize kernel). :func:`use_float8` switches a model's blocks and makes (or drops) each listed
linear's e4m3 copy, a :class:`~videosys.kernels.float8.Float8Weight` in its ``float8_weight`` attribute;
the bf16 / fp16 weights stay (the torch path, and every input the float8 path does not take, use them).
Call it after the weights are loaded and moved: the copy is a snapshot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels.float8 import (
    Float8Rows,
    Float8Weight,
    float8_linear,
    quantize_rows,
)

from .activations import linear_gelu_tanh

__all__ = ["linear", "mlp_gelu_tanh", "stacked_linear", "use_float8"]

#: the attribute of an ``nn.Linear`` that holds its e4m3 copy
WEIGHT_ATTRIBUTE = "float8_weight"
#: where :func:`stacked_linear` keeps a stack of e4m3 copies (on the first layer), with the copies' ids
_STACK_ATTRIBUTE = "float8_stack"


def use_float8(model: nn.Module, enabled: bool = True) -> int:
    """Let every block of ``model`` that can run float8 linears do so where they apply (``enabled``), making
    the e4m3 copies of their listed linears; ``False`` drops the copies. Returns the number of such blocks."""
    blocks = [m for m in model.modules() if hasattr(m, "float8") and hasattr(m, "float8_linears")]
    for block in blocks:
        block.float8 = bool(enabled)
        for layer in block.float8_linears():
            for attribute in (WEIGHT_ATTRIBUTE, _STACK_ATTRIBUTE):
                if hasattr(layer, attribute):
                    delattr(layer, attribute)
            if enabled:
                setattr(layer, WEIGHT_ATTRIBUTE, Float8Weight.from_linear(layer))
    return len(blocks)


def _weight(layer: nn.Linear) -> Float8Weight:
    weight = getattr(layer, WEIGHT_ATTRIBUTE, None)
    if weight is None:
        raise RuntimeError("a float8 input reached a linear without its e4m3 copy (call use_float8 after loading)")
    return weight


def stacked_linear(layers: tuple[nn.Linear, ...], x: torch.Tensor | Float8Rows) -> torch.Tensor:
    """The outputs of ``layers`` (same input width) side by side, as one GEMM over their weights
    concatenated (e.g. q, k and v). The e4m3 weights are concatenated once and kept on the first layer
    until :func:`use_float8` makes new copies; the bf16 / fp16 weights are concatenated per call."""
    if isinstance(x, Float8Rows):
        parts = tuple(_weight(layer) for layer in layers)
        cached = getattr(layers[0], _STACK_ATTRIBUTE, None)
        if cached is None or cached[0] != tuple(map(id, parts)):
            cached = (tuple(map(id, parts)), Float8Weight.stacked(list(parts)), parts)
            setattr(layers[0], _STACK_ATTRIBUTE, cached)
        return float8_linear(x, cached[1])
    weight = torch.cat([layer.weight for layer in layers])
    biases = [layer.bias for layer in layers]
    bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
    return F.linear(x, weight, bias)


def linear(layer: nn.Linear, x: torch.Tensor | Float8Rows, part: slice | None = None) -> torch.Tensor:
    """``layer(x)``, or only its output channels ``part``; from e4m3 operands when ``x`` is
    :class:`~videosys.kernels.float8.Float8Rows`."""
    if isinstance(x, Float8Rows):
        weight = _weight(layer)
        return float8_linear(x, weight if part is None else weight.rows(part))
    if part is None:
        return layer(x)
    return F.linear(x, layer.weight[part], None if layer.bias is None else layer.bias[part])


def mlp_gelu_tanh(x: torch.Tensor | Float8Rows, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """``fc2(gelu(fc1(x), approximate="tanh"))``; from :class:`~videosys.kernels.float8.Float8Rows` both
    linears run in e4m3, the GELU in the kernel that quantizes ``fc2``'s input."""
    if isinstance(x, Float8Rows):
        return float8_linear(quantize_rows(float8_linear(x, _weight(fc1)), gelu=True), _weight(fc2))
    return fc2(linear_gelu_tanh(x, fc1))
