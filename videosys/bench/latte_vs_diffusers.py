"""Our Latte-1 transformer against diffusers' ``LatteTransformer3DModel`` on identical random weights and inputs:
one step, and the 50-call DDIM loop without PAB and with each side's PAB (ours: the model's PAB236 preset;
diffusers: its ``PyramidAttentionBroadcastConfig`` with the same ranges and window)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import torch

from .timing import cuda_timed

DDIM50 = [980 - 20 * i for i in range(50)]


def compare_latte(dtype: torch.dtype = torch.float16, frames: int = 16, size: int = 512, text_tokens: int = 20,
                  repeats: int = 10, loop_repeats: int = 2, compile: bool = False,
                  pab_cache: str | None = None) -> dict[str, Any]:
    """Times and accuracy, as a flat dict (``*_ms`` / ``*_s`` / ``*_gib`` keys); ``compile``: ours with its
    block pieces through ``torch.compile`` (:mod:`videosys.models.compile`; the warm-up calls compile);
    ``pab_cache`` (e.g. ``"int8"``): also ours with PAB236 keeping its outputs in that format
    (``ours_pab236_cache_*`` keys)."""
    from diffusers import (
        LatteTransformer3DModel,
        PyramidAttentionBroadcastConfig,
        apply_pyramid_attention_broadcast,
    )

    from ..models.latte import LatteConfig, LatteTransformer3D
    from ..models.random_init import fill_random_
    from ..pab import PABScheduler
    from ..registry import default_registry

    device = torch.device("cuda")
    config = LatteConfig()
    with torch.device(device):
        ours = LatteTransformer3D(config)
    fill_random_(ours, 0)
    ours = ours.to(dtype).eval().requires_grad_(False)
    ref = LatteTransformer3DModel(**{**dataclasses.asdict(config), "video_length": frames})
    ref.load_state_dict(ours.state_dict())
    ref = ref.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if compile:
        from ..models.compile import compile_pieces

        compile_pieces(ours)
    lat = size // 8
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(2, 4, frames, lat, lat, device=device, generator=gen).to(dtype)
    text = torch.randn(2, text_tokens, 4096, device=device, generator=gen).to(dtype)
    t500 = torch.full((2,), 500, device=device, dtype=torch.long)
    out: dict[str, Any] = {"latent": [2, 4, frames, lat, lat], "dtype": str(dtype).removeprefix("torch."),
                           "ours_compiled": compile}
    preset = default_registry().get("latte").load_config().pab.get("pab236")
    current = {"t": 999}
    with torch.inference_mode():
        out["ours_step_ms"] = statistics.median(cuda_timed(lambda: ours(x, t500, text), repeats)) * 1e3
        out["diffusers_step_ms"] = statistics.median(cuda_timed(
            lambda: ref(x, timestep=t500, encoder_hidden_states=text, return_dict=False)[0], repeats)) * 1e3
        out["step_speedup"] = out["diffusers_step_ms"] / out["ours_step_ms"]
        out["max_abs_diff"] = float((ours(x, t500, text).float()
                                     - ref(x, timestep=t500, encoder_hidden_states=text, return_dict=False)[0].float())
                                    .abs().max())

        def ours_loop(pab: Any) -> None:
            with PABScheduler(pab).new_run(DDIM50) as run:
                for ts in DDIM50:
                    run.begin_call()
                    ours(x, torch.full((2,), ts, device=device, dtype=torch.long), text, pab=run)

        def ref_loop() -> None:
            hook = getattr(ref, "_diffusers_hook", None)
            if hook is not None:
                hook.reset_stateful_hooks()
            for ts in DDIM50:
                current["t"] = ts
                ref(x, timestep=torch.full((2,), ts, device=device, dtype=torch.long), encoder_hidden_states=text,
                    return_dict=False)

        def timed(name: str, fn: Any) -> None:
            torch.cuda.reset_peak_memory_stats(device)
            out[f"{name}_loop_s"] = statistics.median(cuda_timed(fn, loop_repeats, warmup=1))
            out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

        from ..pab import PABConfig

        timed("ours_nopab", lambda: ours_loop(PABConfig.disabled()))
        timed("ours_pab236", lambda: ours_loop(preset))
        if pab_cache not in (None, "native"):
            timed("ours_pab236_cache", lambda: ours_loop(dataclasses.replace(preset, cache=pab_cache)))
            out["ours_pab_cache_format"] = pab_cache
            out["ours_pab_cache_memory_overhead"] = out["ours_pab236_cache_peak_gib"] / out["ours_nopab_peak_gib"] - 1
        timed("diffusers_nopab", ref_loop)
        s, tm, c = preset.spatial, preset.temporal, preset.cross
        apply_pyramid_attention_broadcast(ref, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=s.range, temporal_attention_block_skip_range=tm.range,
            cross_attention_block_skip_range=c.range, spatial_attention_timestep_skip_range=tuple(s.window),
            temporal_attention_timestep_skip_range=tuple(tm.window), cross_attention_timestep_skip_range=tuple(c.window),
            spatial_attention_block_identifiers=(r"^transformer_blocks",),
            temporal_attention_block_identifiers=(r"^temporal_transformer_blocks",),
            cross_attention_block_identifiers=(r"^transformer_blocks",),
            current_timestep_callback=lambda: current["t"]))
        timed("diffusers_pab", ref_loop)
    out["loop_speedup_nopab"] = out["diffusers_nopab_loop_s"] / out["ours_nopab_loop_s"]
    out["loop_speedup_pab"] = out["diffusers_pab_loop_s"] / out["ours_pab236_loop_s"]
    out["ours_pab_memory_overhead"] = out["ours_pab236_peak_gib"] / out["ours_nopab_peak_gib"] - 1
    return out
