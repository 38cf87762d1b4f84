"""``torch.compile`` of the denoisers' block pieces (videosys.models.compile): the same outputs as eager mode
through PAB schedules that compute and broadcast, idempotent wrapping, unchanged state dicts, and the
engine / pipeline plumbing of ``compile=True``.

The numerics tests use torch's ``aot_eager`` backend: it traces each piece with Dynamo and AOTAutograd (the
graph capture a GPU run relies on, PAB's Python branches around it included) without Inductor's C++ code
generation, which would cost CI minutes and a compiler on the CPU machine.  Inductor's fused kernels are
measured on the GPU by ``videosys bench --compile`` (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from support import stdit3_pab_calls

from videosys.models.compile import compile_pieces, compiled_pieces
from videosys.pab import PABConfig, PABScheduler

BACKEND = "aot_eager"
SCHEDULE = [900.0, 800.0, 700.0, 600.0]
PAB = {"window": [550, 950], "spatial_range": 2, "temporal_range": 2, "cross_range": 3,
       "mlp": {"timesteps": [800], "blocks": [0], "skip_count": 2}}


def _stdit3_calls(model: torch.nn.Module, pab: PABConfig) -> tuple[list[torch.Tensor], dict]:
    outs, stats = stdit3_pab_calls(model, pab, SCHEDULE)
    return outs, stats.as_dict()


def test_stdit3_compiled_pieces_match_eager_under_pab() -> None:
    from videosys.testing.tiny_stdit3 import make_stdit3

    eager = make_stdit3(seed=0).eval()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    blocks = len(compiled.spatial_blocks) + len(compiled.temporal_blocks)
    assert compile_pieces(compiled, backend=BACKEND) == 3 * blocks
    assert compile_pieces(compiled, backend=BACKEND) == 0  # idempotent
    assert compiled_pieces(compiled) == 3 * blocks and compiled_pieces(eager) == 0
    assert list(compiled.state_dict()) == keys

    pab = PABConfig.from_dict(PAB)
    want, want_stats = _stdit3_calls(eager, pab)
    got, got_stats = _stdit3_calls(compiled, pab)
    assert got_stats == want_stats and sum(v["broadcast"] for v in got_stats.values()) > 0
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_latte_compiled_pieces_match_eager_under_pab() -> None:
    from videosys.demo.train import SIZE_PRESETS, transformer_config
    from videosys.models.latte import LatteTransformer3D
    from videosys.models.latte.transformer import LatteConfig
    from videosys.models.layers.blocks import LatteBlock

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        eager = LatteTransformer3D(LatteConfig.from_json_dict(transformer_config(SIZE_PRESETS["tiny"]))).eval()
    compiled = copy.deepcopy(eager)
    blocks = sum(isinstance(m, LatteBlock) for m in compiled.modules())
    assert blocks == 2 and compile_pieces(compiled, backend=BACKEND) == 3 * blocks
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, eager.config.in_channels, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, eager.config.caption_channels, generator=g)

    def calls(model: torch.nn.Module) -> tuple[list[torch.Tensor], dict]:
        outs = []
        with torch.no_grad(), PABScheduler(PABConfig.from_dict(PAB)).new_run(SCHEDULE) as run:
            for t in SCHEDULE:
                run.begin_call()
                outs.append(model(x, torch.tensor([t, t]), text, pab=run))
            return outs, run.stats.as_dict()

    want, want_stats = calls(eager)
    got, got_stats = calls(compiled)
    assert got_stats == want_stats and sum(v["broadcast"] for v in got_stats.values()) > 0
    for w, o in zip(want, got):
        torch.testing.assert_close(o, w, atol=1e-5, rtol=1e-5)


def test_engine_compile_flag_reaches_the_loaded_denoiser(tiny_latte_dir: Path) -> None:
    """``VideoSysEngine(compile=True)`` wraps the pieces when the pipeline loads (compilation itself waits
    for the first call); the default stays eager."""
    from videosys import VideoSysEngine

    spec = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", progress=False, compile=True).pipeline_spec()
    assert spec.compile
    pipeline = spec.build()
    assert pipeline.compile_denoiser and compiled_pieces(pipeline.transformer) > 0
    plain = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", progress=False).pipeline_spec().build()
    assert not plain.compile_denoiser and compiled_pieces(plain.transformer) == 0


@pytest.mark.parametrize("argv", [["generate", "x", "--compile", "--help"], ["bench", "--compile", "--help"]])
def test_cli_accepts_compile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from videosys.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "--compile" in capsys.readouterr().out
