"""The format PAB keeps outputs in (videosys.pab.kept, ``PABConfig.cache``): the int8 rows' error bound and
memory, a run through a real model that broadcasts restored outputs, and the config / CLI plumbing."""

from __future__ import annotations

import re

import pytest
import torch
from support import stdit3_pab_calls

from videosys.pab import (
    PABConfig,
    PABConfigError,
    PABPresets,
    PABRun,
    PABScheduler,
    resolve_pab,
    with_cache_format,
)
from videosys.pab.kept import KeptInt8, keep, kept_nbytes, restore

SCHEDULE = [900.0, 800.0, 700.0, 600.0, 500.0]
PAB = {"window": [450, 950], "spatial_range": 2, "temporal_range": 3, "cross_range": 4,
       "mlp": {"timesteps": [800], "blocks": [0], "skip_count": 2}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_rows_round_trip_within_half_a_step(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 40, 96, generator=gen) * torch.logspace(-3, 2, 96)).to(dtype)  # rows of mixed scale
    x[1, 7] = 0  # an all-zero row
    original = x.clone()
    kept = keep(x, "int8")
    assert torch.equal(x, original)  # the output itself is left as it was (it is also the step's result)
    assert isinstance(kept, KeptInt8) and kept.values.dtype == torch.int8 and kept.scales.shape == (3, 40, 1)
    back = restore(kept)
    assert back.dtype == dtype and back.shape == x.shape
    assert torch.equal(back[1, 7], x[1, 7])
    row_max = x.float().abs().amax(dim=-1, keepdim=True)
    dtype_step = torch.finfo(dtype).eps * x.float().abs()  # the final rounding back to a 16-bit dtype
    err = (back.float() - x.float()).abs()
    assert bool((err <= row_max / 254 * 1.0001 + dtype_step).all())
    assert err.max() > 0  # it is a lossy format: the test would notice the values kept as they were
    assert kept_nbytes(kept) == 3 * 40 * 96 + 3 * 40 * 4  # a byte per value and a float32 scale per row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_keep_and_restore_are_the_reference_formula(dtype: torch.dtype) -> None:
    """The one-pass restore and the clamp-free keep give exactly the numbers of the plain formula
    (``round(x / scale)`` clamped to +-127; widen, multiply, narrow), also on rows at the edges: every
    element at +-max|row|, the dtype's largest and smallest normal values."""
    gen = torch.Generator().manual_seed(1)
    info = torch.finfo(dtype)
    x = torch.randn(6, 33, generator=gen).to(dtype)
    x[0] = 3.0
    x[1, ::2], x[1, 1::2] = -2.5, 2.5
    x[2] = info.max
    x[2, 5] = -info.max
    x[3] = info.tiny
    x[4] = torch.linspace(-1, 1, 33).to(dtype) * 1e-3
    kept = keep(x, "int8")
    row_max = x.float().abs().amax(dim=-1, keepdim=True)
    scales = torch.where(row_max > 0, row_max / 127.0, torch.ones_like(row_max))
    want_values = (x.float() / scales).round().clamp(-127, 127).to(torch.int8)
    assert torch.equal(kept.scales, scales) and torch.equal(kept.values, want_values)
    assert kept.values.abs().max() == 127 and torch.equal(kept.values[0], torch.full((33,), 127, dtype=torch.int8))
    assert torch.equal(restore(kept), (want_values.float() * scales).to(dtype))


def test_native_and_non_float_outputs_are_kept_as_they_are() -> None:
    x = torch.randn(2, 8)
    assert keep(x, "native") is x and restore(x) is x and kept_nbytes(x) == 64
    ids = torch.arange(6)
    assert keep(ids, "int8") is ids
    assert keep((x, x), "int8") == (x, x) and kept_nbytes((x, x)) == 0
    with pytest.raises(ValueError, match=r"'fp8' not allowed \(allowed: native, int8\)"):
        keep(x, "fp8")
    plan = PABScheduler(PABConfig.disabled()).plan([500.0])
    with pytest.raises(ValueError, match=r"cache: 'fp8' not allowed \(allowed: native, int8\)"):
        PABRun(plan, cache="fp8")


def _stdit3_calls(cache: str) -> tuple[list[torch.Tensor], dict, int]:
    from videosys.testing.tiny_stdit3 import make_stdit3

    outs, stats = stdit3_pab_calls(make_stdit3(seed=0).eval(), PABConfig.from_dict({**PAB, "cache": cache}), SCHEDULE)
    return outs, stats.as_dict(), stats.peak_kept_bytes


def test_int8_cache_through_stdit3_same_schedule_quarter_memory_close_outputs() -> None:
    want, want_stats, native_peak = _stdit3_calls("native")
    got, got_stats, int8_peak = _stdit3_calls("int8")
    assert got_stats == want_stats and sum(v["broadcast"] for v in got_stats.values()) > 0
    # fp32 model, 64 channels: 1 byte per value plus a 4-byte scale per 64-value row, instead of 4 bytes
    assert 0 < int8_peak == pytest.approx(native_peak * (1 + 4 / 64) / 4)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)  # call 0 computes everything
    diffs = [float((g - w).abs().max()) for g, w in zip(got[1:], want[1:])]
    assert max(diffs) > 0  # the broadcast calls did use the int8 outputs
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= 0.02 * float(w.abs().max())


def test_cache_field_in_configs_presets_and_dicts(tmp_path) -> None:
    presets = PABPresets.from_dict({"default": "pab236", "presets": {"pab236": {"window": [100, 800],
                                                                                "spatial_range": 2}}})
    cfg = resolve_pab({"preset": "pab236", "cache": "int8"}, presets)
    assert cfg.cache == "int8" and cfg.name == "pab236" and cfg.label == "pab236+int8" and cfg.spatial.range == 2
    assert resolve_pab(with_cache_format("default", "int8"), presets).label == "pab236+int8"
    assert resolve_pab(with_cache_format("pab236", None), presets).label == "pab236"
    assert resolve_pab({"preset": "none", "cache": "int8"}, presets).enabled is False
    mine = tmp_path / "mine.yaml"
    mine.write_text("window: [100, 800]\ntemporal_range: 3\n")
    assert resolve_pab({"preset": str(mine), "cache": "int8"}, presets).label == "mine+int8"
    assert PABConfig.from_dict({"window": [1, 2], "spatial_range": 2}).to_dict().get("cache") is None
    round_trip = PABConfig.from_dict(cfg.to_dict())
    assert round_trip == cfg
    with pytest.raises(PABConfigError, match=r"pab.cache: 'fp8' not allowed \(allowed: native, int8\)"):
        resolve_pab({"preset": "pab236", "cache": "fp8"}, presets)
    with pytest.raises(PABConfigError, match=r"pab.cache: 8 not allowed"):
        PABConfig.from_dict({"window": [1, 2], "spatial_range": 2, "cache": 8})
    with pytest.raises(PABConfigError, match=r"unknown key\(s\) \['spatial_range'\] next to 'preset'"):
        resolve_pab({"preset": "pab236", "spatial_range": 3}, presets)
    with pytest.raises(PABConfigError, match="'pab999' is not a preset"):
        resolve_pab({"preset": "pab999", "cache": "int8"}, presets)


def test_cli_generate_with_an_int8_pab_cache(tmp_path, capsys) -> None:
    """The bundled demo model (fp32 on the CPU, 256 channels) through the CLI with each cache format: the
    summary names the format and the kept outputs' peak, which int8 cuts to (1 + 4/256) / 4 of native."""
    from videosys.cli import main

    peaks = {}
    for fmt in ("native", "int8"):
        out = tmp_path / f"{fmt}.mp4"
        assert main(["generate", "a cat", "--steps", "3", "--pab", "pab236", "--pab-cache", fmt, "--no-progress",
                     "-o", str(out)]) == 0
        text = capsys.readouterr().out
        label = "pab236" if fmt == "native" else "pab236+int8"
        match = re.search(rf"pab        {re.escape(label)} \(kept outputs: peak ([0-9.]+) MiB\)", text)
        assert match and out.stat().st_size > 0, text
        peaks[fmt] = float(match.group(1))
    assert peaks["native"] > 0
    assert peaks["int8"] == pytest.approx(peaks["native"] * (1 + 4 / 256) / 4, abs=0.1)
    with pytest.raises(SystemExit) as exc:
        main(["generate", "a cat", "--pab", "pab236", "--pab-cache", "fp8"])
    assert exc.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
