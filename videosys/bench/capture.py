"""The engine's in-process pipeline, and one denoiser call's inputs captured from a short request, for the
benchmark harness and the scripts that time the denoiser alone."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["capture_denoiser_call", "local_pipeline"]


def local_pipeline(engine: Any) -> Any:
    """The pipeline of an engine that runs in this process (one rank), loaded."""
    return engine.load()._executor.pipeline


def capture_denoiser_call(engine: Any, prompt: str, **request_fields: Any) -> tuple[torch.nn.Module, tuple,
                                                                                      dict[str, Any]]:
    """The denoiser of ``engine``'s local pipeline and the arguments of its first call in a request of the
    fewest steps the model allows (PAB off, the PAB run argument dropped; ``request_fields``: other request
    fields, e.g. ``frames``)."""
    denoiser = local_pipeline(engine).transformer
    captured: dict[str, Any] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.setdefault("call", (args, dict(kwargs, pab=None)))

    handle = denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        steps = engine.config.allowed.min_steps
        engine.generate_requests([engine.make_request(prompt, steps=steps, pab="none", **request_fields)])
    finally:
        handle.remove()
    args, kwargs = captured["call"]
    return denoiser, args, kwargs
