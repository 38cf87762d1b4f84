"""Opt-in ``torch.compile`` of the denoisers' block pieces (``VideoSysEngine(compile=True)``, ``--compile``).

What gets compiled is each block's *broadcastable pieces*, the methods a block class names in its
``compile_pieces`` class attribute (STDiT3: ``self_attention``, ``cross_attention``, ``feed_forward``; the
Latte / Open-Sora-Plan block: ``self_attention``, ``cross_attention``, ``mlp``), not whole blocks:

* PAB's decision and its cache live *between* those pieces, in Python (:func:`videosys.pab.run.run_module`),
  so a broadcast step skips the compiled call exactly as it skips the eager one, and no guard of the compiled
  code depends on the step or on PAB's state;
* inside a piece sit the chains that run unfused in eager mode (layer norm, adaLN modulate, the layout
  switches of the temporal attention, RoPE, the MLP's activation), which Inductor fuses.

Blocks of one kind share their code object and shapes, so every block of a model reuses one compiled
graph per piece and block kind (torch inlines the module's parameters as graph inputs).  Shapes are static
per request size (``dynamic=False``); a new size compiles once more (after torch's recompile limit, 8 sizes
per piece in one process, further sizes run those pieces eagerly).  Under sequence parallel the all-to-alls
stay outside the graphs (:func:`videosys.parallel.comm.all_to_all` hands them to a
``torch.compiler.disable``-d function), so each spatial piece is two graphs around its collectives.  Numerics: Inductor may fuse and
reorder floating-point work, so outputs differ from eager mode within the dtype's rounding; that is why it
is a flag, off by default.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["compile_pieces", "compiled_pieces"]

logger = logging.getLogger(__name__)


def compile_pieces(model: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> int:
    """Replace, on every submodule of ``model`` whose class lists ``compile_pieces``, each listed method by
    its ``torch.compile`` (the instance attribute shadows the class method; the state dict is unchanged).

    Idempotent: a piece compiled before is left alone.  Returns the number of methods wrapped now.
    ``backend`` / ``mode`` go to :func:`torch.compile` (``mode="max-autotune-no-cudagraphs"`` tunes GEMMs).
    """
    wrapped = 0
    for module in model.modules():
        for name in getattr(type(module), "compile_pieces", ()):
            if name in module.__dict__:  # already compiled on this instance
                continue
            method = getattr(module, name)
            options: dict[str, Any] = {"backend": backend, "dynamic": False}
            if mode is not None:
                options["mode"] = mode
            setattr(module, name, torch.compile(method, **options))
            wrapped += 1
    if wrapped:
        logger.info("torch.compile (%s%s): %d block pieces of %s", backend, f", {mode}" if mode else "", wrapped,
                    type(model).__name__)
    return wrapped


def compiled_pieces(model: nn.Module) -> int:
    """How many block pieces of ``model`` are compiled (0: eager)."""
    return sum(name in module.__dict__ for module in model.modules()
               for name in getattr(type(module), "compile_pieces", ()))
