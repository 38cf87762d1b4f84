"""Text encoder offload (videosys.models.offload): the module's tensors live in host memory and visit the
device only inside ``on()``; tied weights stay tied; pipelines give the same videos with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from videosys.models.offload import DeviceVisits


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as T5's shared embedding
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids)) * self.scale


def test_tensors_visit_the_device_only_inside_on() -> None:
    module = Tied().requires_grad_(False)
    ids = torch.tensor([[1, 2, 3]])
    want = module(ids)
    visits = DeviceVisits(module, pin=False)
    assert visits.nbytes == 10 * 4 * 4 + 4  # the tied weight once, the buffer
    host_ptr = module.embed.weight.data_ptr()
    with visits.on("meta") as on_device:
        assert on_device is module and visits.device.type == "meta"
        assert module.head.weight is module.embed.weight and module.scale.device.type == "meta"
    assert visits.device.type == "cpu" and module.embed.weight.data_ptr() == host_ptr
    assert module.head.weight is module.embed.weight
    with visits.on("cpu"):
        torch.testing.assert_close(module(ids), want, rtol=0, atol=0)
    torch.testing.assert_close(module(ids), want, rtol=0, atol=0)


def test_a_trainable_module_is_refused() -> None:
    with pytest.raises(ValueError, match="frozen"):
        DeviceVisits(Tied(), pin=False)


def test_a_failing_body_still_returns_the_tensors_to_the_host() -> None:
    module = Tied().requires_grad_(False)
    visits = DeviceVisits(module, pin=False)
    with pytest.raises(RuntimeError, match="boom"), visits.on("meta"):
        raise RuntimeError("boom")
    assert visits.device.type == "cpu"


def test_engine_offload_gives_the_same_video(tiny_latte_dir: Path, tiny_opensora_dir: Path) -> None:
    from videosys import VideoSysEngine

    def video(offload: bool) -> tuple[torch.Tensor, object]:
        engine = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", progress=False,
                                offload_text_encoder=offload)
        with engine:
            result = engine.generate("a cat", steps=2, seed=3)
        return torch.as_tensor(result.frames), engine

    plain, _ = video(False)
    offloaded, engine = video(True)
    assert torch.equal(plain, offloaded)
    spec = engine.pipeline_spec()
    assert spec.offload_text_encoder
    pipeline = spec.build()
    assert pipeline.text_encoder_visits is not None and pipeline.text_encoder_visits.nbytes > 0

    osp = VideoSysEngine("opensora", weights=tiny_opensora_dir, device="cpu", progress=False,
                         offload_text_encoder=True).pipeline_spec().build()
    want = VideoSysEngine("opensora", weights=tiny_opensora_dir, device="cpu",
                          progress=False).pipeline_spec().build().encode_text("a cat")
    got = osp.encode_text("a cat")
    assert osp.text_encoder_visits is not None
    assert all(torch.equal(a, b) for a, b in zip(want, got))
