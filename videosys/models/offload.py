"""Keep a frozen model in host memory and put it on the device only while it runs (text encoder offload).

The T5-XXL text encoder of every supported pipeline holds about 9 GiB in 16-bit and runs once per request,
for a few milliseconds; the denoiser then needs the memory for PAB's caches and activations.  With
``VideoSysEngine(offload_text_encoder=True)`` (``--offload-text-encoder``) the encoder's weights live in
pinned host memory and each request copies them to the device for encoding only.  The weights are frozen,
so nothing is copied back: leaving the device is dropping the device copies.

Cost: one host-to-device copy of the encoder per request (about 0.2-0.4 s for T5-XXL over PCIe 4/5 from
pinned memory), against the encoder's whole footprint during denoising and decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["DeviceVisits"]

logger = logging.getLogger(__name__)


class DeviceVisits:
    """A frozen module whose tensors stay in host memory except inside :meth:`on`.

    ``pin``: page-locked host copies (fast, asynchronous copies to a CUDA device; only where CUDA exists).
    """

    def __init__(self, module: nn.Module, *, pin: bool | None = None) -> None:
        if any(p.requires_grad for p in module.parameters()):
            raise ValueError("DeviceVisits is for frozen modules (parameters with requires_grad=False): "
                             "the device copies are dropped, never copied back")
        pin = torch.cuda.is_available() if pin is None else pin
        self.module = module
        # every slot that holds a tensor; a tied weight (T5's shared embedding) fills several slots with
        # one Parameter, which stays one object on the device too
        self._params: list[tuple[nn.Module, str, nn.Parameter]] = []
        self._buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
        for owner in module.modules():
            self._params += [(owner, name, p) for name, p in owner._parameters.items() if p is not None]
            self._buffers += [(owner, name, b) for name, b in owner._buffers.items() if b is not None]
        unique = {id(p): p for _, _, p in self._params}
        for param in unique.values():
            param.data = param.data.to("cpu")
            if pin:
                param.data = param.data.pin_memory()
        for i, (owner, name, buffer) in enumerate(self._buffers):
            host = buffer.to("cpu")
            host = host.pin_memory() if pin else host
            owner._buffers[name] = host
            self._buffers[i] = (owner, name, host)
        self.nbytes = sum(t.numel() * t.element_size() for t in [*unique.values(), *(b for _, _, b in self._buffers)])

    @property
    def device(self) -> torch.device:
        """Where the module's tensors are now."""
        owner, name, _ = self._params[0]
        return owner._parameters[name].device  # type: ignore[union-attr]

    @contextmanager
    def on(self, device: torch.device | str) -> Iterator[nn.Module]:
        """The module with its tensors on ``device`` for the ``with`` body; back on the host copies after."""
        device = torch.device(device)
        copies: dict[int, nn.Parameter] = {}
        try:
            for owner, name, param in self._params:
                if id(param) not in copies:
                    copies[id(param)] = nn.Parameter(param.detach().to(device, non_blocking=True), requires_grad=False)
                owner._parameters[name] = copies[id(param)]
            for owner, name, buffer in self._buffers:
                owner._buffers[name] = buffer.to(device, non_blocking=True)
            yield self.module
        finally:
            for owner, name, param in self._params:
                owner._parameters[name] = param
            for owner, name, buffer in self._buffers:
                owner._buffers[name] = buffer
