"""Rotary position embedding (RoPE) with interleaved channel pairs, as the ``rotary-embedding-torch``
package lays it out (its ``RotaryEmbedding(dim).rotate_queries_or_keys``), so checkpoints that hold its
``freqs`` parameter load unchanged.

Channel pairs ``(x[2i], x[2i+1])`` are rotated by the angle ``pos * freqs[i]``::

    x' = x * cos(angle) + rot(x) * sin(angle),   rot: (x[2i], x[2i+1]) -> (-x[2i+1], x[2i])
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "apply_rotary"]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., seq, dim]`` by the ``[seq, dim]`` tables of :meth:`RotaryEmbedding.cos_sin`.

    Computed in float32 and cast back to ``x.dtype``, as one complex multiplication per channel pair
    ``(x[2i] + i x[2i+1]) * (cos + i sin)``: three passes over ``x`` (widen, multiply, narrow) where
    the real form ``x * cos + (-x[2i+1], x[2i]) * sin`` takes eight; the same products and sums.
    """
    xf = x.float()
    if xf.stride(-1) != 1 or any(stride % 2 for stride in xf.stride()[:-1]):
        xf = xf.contiguous()  # a complex view needs each channel pair adjacent and pair-aligned
    xf = xf.unflatten(-1, (-1, 2))
    rotation = torch.complex(cos[..., ::2], sin[..., ::2])
    return torch.view_as_real(torch.view_as_complex(xf) * rotation).flatten(-2).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Holds ``freqs`` ``[dim // 2]`` = ``1 / theta^(arange(0, dim, 2) / dim)`` as a non-trainable parameter.

    The parameter (not a buffer) is deliberate: the reference library registers it so, which puts it in
    checkpoints as ``<name>.freqs``; the loaded values are the ones used.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"rotary embedding dim must be even, got {dim}")
        self.dim = dim
        self.theta = theta
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def cos_sin(
        self, num_positions: int, device: Union[str, torch.device, None] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(cos, sin)`` tables ``[num_positions, dim]`` for positions ``0 .. num_positions - 1``.

        The angles ``pos * freqs`` are formed in the dtype of ``freqs`` (bf16 in a bf16 model), as the
        reference library does, and widened to float32 before cos/sin and the rotation.
        """
        freqs = self.freqs.detach()
        if device is not None:
            freqs = freqs.to(device)
        pos = torch.arange(num_positions, device=freqs.device).to(freqs.dtype)
        angles = (pos[:, None] * freqs[None, :]).float().repeat_interleave(2, dim=-1)
        return angles.cos(), angles.sin()

    def rotate(self, x: torch.Tensor, tables: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Rotate ``x`` ``[..., seq, dim]`` (positions along ``seq``)."""
        cos, sin = tables if tables is not None else self.cos_sin(x.shape[-2], x.device)
        return apply_rotary(x, cos, sin)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta}"
