"""Memory layout of the residual stream: every block of every denoiser receives its tokens contiguous.

An elementwise op keeps the layout of its first operand, so a transposed view entering the first block (the
patch embedding's ``flatten(2).transpose(1, 2)``) would make every residual add of the model a strided
kernel and every norm copy its input first; on an H200 that cost ~110 ms of a 500 ms Open-Sora call
(docs/benchmarks.md). The numbers are the same either way, so only this test sees it.
"""

from __future__ import annotations

import torch
from torch import nn

from videosys.models.layers.blocks import LatteBlock
from videosys.models.opensora.stdit3 import STDiT3Block


def _block_inputs_contiguous(model: nn.Module, block_type: type, call) -> list[bool]:
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
             for m in model.modules() if isinstance(m, block_type)]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_stdit3_blocks_get_contiguous_tokens() -> None:
    from test_stdit3 import make_inputs

    from videosys.testing.tiny_stdit3 import make_stdit3

    model = make_stdit3(seed=0).eval()
    x = make_inputs(frames=3, height=4, width=6)
    seen = _block_inputs_contiguous(model, STDiT3Block, lambda: model(**x))
    assert len(seen) == 2 * len(model.spatial_blocks) and all(seen), seen


def test_latte_blocks_get_contiguous_tokens() -> None:
    from videosys.demo.train import SIZE_PRESETS, transformer_config
    from videosys.models.latte import LatteTransformer3D
    from videosys.models.latte.transformer import LatteConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LatteTransformer3D(LatteConfig.from_json_dict(transformer_config(SIZE_PRESETS["tiny"]))).eval()
    x = torch.randn(2, model.config.in_channels, 4, 8, 8)
    text = torch.randn(2, 5, model.config.caption_channels)
    seen = _block_inputs_contiguous(model, LatteBlock, lambda: model(x, torch.tensor([500.0, 500.0]), text))
    blocks = sum(isinstance(m, LatteBlock) for m in model.modules())
    assert blocks == 2 and len(seen) == blocks and all(seen), seen
