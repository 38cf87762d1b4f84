"""The end-to-end benchmark behind ``videosys bench``: a model at its paper settings (the model YAML's sampling
defaults) with random full-size weights, PAB off and each preset; per stage the median of repeated requests
after warm-up, the per-step time, the peak GPU memory, the FLOPs of one denoiser call and their ratio to the
bf16/fp16 GEMM rate measured in the same run (the floor).

With pool options (``world_size``, ``sp``, ``cfg_parallel``...) the requests run on the engine's Ray worker
pool: the stage medians and the communication per request are measured there; the per-call FLOPs, the GEMM
rate and the peak memory belong to the ranks' processes and are left out (NaN).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .capture import local_pipeline

logger = logging.getLogger(__name__)

STAGES = ("text_encoder", "denoise", "vae_decode", "total")
#: the caption of the benchmark's requests (short: the cross-attention folds it; ``videosys bench --prompt``)
DEFAULT_PROMPT = "a red panda eating bamboo in a misty forest"


@dataclass
class SettingResult:
    """The medians of one PAB setting."""

    pab: str
    runs: int
    stages_s: dict[str, float]
    per_call_ms: float
    peak_gib: float
    pab_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    comm_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    pab_kept_gib: float = 0.0  # the most PAB's kept outputs held at once (driver rank)
    replayed_calls: int = 0  # denoiser calls of the last request replayed from CUDA graphs


@dataclass
class BenchReport:
    model: str
    device: str
    versions: dict[str, str]
    request: dict[str, Any]
    denoiser_calls: int
    gemm_tflops: float
    call_tflop: float  # one denoiser call of the model as written (every caption attended unfolded)
    floor_call_ms: float  # call_tflop at gemm_tflops
    settings: list[SettingResult]
    layout: str = "1 rank"
    compiled: bool = False  # the denoiser's block pieces ran through torch.compile
    #: seconds of the run's first request (PAB off, untimed in the table; NaN on a pool): with ``compiled``
    #: it includes the compilation, what a fresh engine's first request costs
    first_request_s: float = float("nan")
    #: the FLOPs one call ran (fewer than ``call_tflop`` where the cross-attention folded a short caption)
    executed_call_tflop: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        r = self.request
        title = (f"{self.model}: {r['frames']} x {r['height']} x {r['width']}, {r['steps']} steps "
                 f"({self.denoiser_calls} denoiser calls), guidance {r['guidance']}, {r['dtype']}; {self.device}; "
                 f"{self.layout}{'; torch.compile' if self.compiled else ''}")
        if not math.isnan(self.first_request_s):  # measured in this process (NaN on a pool)
            title += f"; first request {self.first_request_s:.1f} s{' (compiling)' if self.compiled else ''}"
        ran = ""
        if not math.isclose(self.executed_call_tflop, self.call_tflop, rel_tol=1e-3):
            ran = f" ({self.executed_call_tflop:.2f} run: the cross-attention folded)"
        floor = (f"GEMM {self.gemm_tflops:.0f} TFLOP/s; one denoiser call {self.call_tflop:.2f} TFLOP{ran} -> floor "
                 f"{self.floor_call_ms:.1f} ms/call")
        header = ("| PAB | text encoder (s) | denoise (s) | VAE decode (s) | total (s) | ms/call | x floor "
                  "| denoise speedup | peak GiB | PAB kept GiB | comm MiB (all-to-all) | graph replays |")
        lines = [title, floor, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = self.settings[0].stages_s["denoise"] if self.settings else float("nan")
        for s in self.settings:
            st = s.stages_s
            lines.append(f"| {s.pab} | {st.get('text_encoder', 0):.2f} | {st['denoise']:.2f} | "
                         f"{st.get('vae_decode', 0):.2f} | {st['total']:.2f} | {s.per_call_ms:.1f} | "
                         f"{s.per_call_ms / self.floor_call_ms:.2f} | {base / st['denoise']:.2f}x | {s.peak_gib:.1f} | "
                         f"{s.pab_kept_gib:.2f} | {_comm_mib(s.comm_stats)} | {s.replayed_calls}/{self.denoiser_calls} |")
        return "\n".join(lines)


def _comm_mib(stats: dict[str, dict[str, int]]) -> str:
    if not stats:
        return "-"
    total = stats.get("total", {}).get("bytes", 0) / 2**20
    a2a = stats.get("all_to_all", {}).get("bytes", 0) / 2**20
    return f"{total:.1f} ({a2a:.1f})"


def measure_gemm_tflops(dtype: torch.dtype, device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Dense ``n x n x n`` matmul rate in TFLOP/s (median), the floor's denominator."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


def _addmm_flops(bias_shape: Sequence[int], a_shape: Sequence[int], b_shape: Sequence[int], **_: Any) -> int:
    """FLOPs of ``bias + a @ b`` (``a`` ``[M, K]``, ``b`` ``[K, N]``), as torch's counter counts ``addmm``."""
    m, k = a_shape
    k2, n = b_shape
    if k != k2:
        raise ValueError(f"addmm shapes do not chain: {list(a_shape)} @ {list(b_shape)}")
    return 2 * m * k * n


class _FirstCallFlops:
    """Counts the FLOPs of one forward of a module (one denoiser call: the first, or the one after
    ``skip_calls`` others) with torch's FlopCounterMode. ``unfolded``: that call attends every caption
    unfolded (:mod:`videosys.models.layers.folded_attention`), so that it counts the model as its authors
    wrote it (the floor's work) rather than the fewer FLOPs a folded cross-attention runs.

    That call runs with ``torch.compile`` stood down (stance ``force_eager``): Dynamo meeting a frame under
    the counter's dispatch mode skips that code for good, so compiled block pieces (``--compile``) would
    run eagerly in every timed request after it.

    The eager MLPs' GEMM with a GELU epilogue (``aten._addmm_activation``) is counted as the ``addmm`` it
    is: torch's counter does not know that op, and without this the fifth of a DiT call's FLOPs in its
    first MLP linear went uncounted (an Open-Sora call read 81.1 instead of 109.5 TFLOP). The Triton
    kernels (:mod:`videosys.kernels`) are not seen by the counter: the temporal attention's FLOPs are
    ~0.003% of a call's, the others do elementwise work only."""

    def __init__(self, module: torch.nn.Module, skip_calls: int = 0, unfolded: bool = False) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.flops = 0
        self._mode = FlopCounterMode(display=False, custom_mapping={torch.ops.aten._addmm_activation: _addmm_flops})
        self._eager: Any = None
        self._handles = [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._exit)]
        self._active = False
        self._skip = skip_calls
        self._folding = [m for m in module.modules() if getattr(m, "fold_short_context", False)] if unfolded else []

    def _enter(self, *_: Any) -> None:
        if not self._handles:
            return
        if self._skip:
            self._skip -= 1
            return
        self._active = True
        for m in self._folding:
            m.fold_short_context = False
        # made here, not in __init__: constructing a set_stance sets the stance at once (and remembers the one
        # before it, which a second counter made meanwhile would take for the default)
        self._eager = torch.compiler.set_stance("force_eager")
        self._eager.__enter__()
        self._mode.__enter__()

    def _exit(self, *_: Any) -> None:
        if self._active:
            self._leave()
            self.flops = self._mode.get_total_flops()
            self.remove()

    def _leave(self) -> None:
        self._mode.__exit__(None, None, None)
        self._eager.__exit__(None, None, None)
        for m in self._folding:
            m.fold_short_context = True
        self._active = False

    def remove(self) -> None:
        """Stop counting (also after a forward that raised: the counter and the eager stance are left)."""
        if self._active:
            self._leave()
        for h in self._handles:
            h.remove()
        self._handles = []


def run_bench(model: str, *, pab: Sequence[str] | None = None, repeats: int = 3, warmup: int = 1,
              overrides: dict[str, Any] | None = None, device: str = "cuda", dtype: str | None = None,
              weights: str = "random", prompt: str | None = None,
              engine_kwargs: dict[str, Any] | None = None, pab_cache: str | None = None) -> BenchReport:
    """Benchmark ``model`` with PAB off and each of ``pab`` (default: every preset of the model);
    ``engine_kwargs`` are the engine's pool options (``world_size``, ``sp``, ``cfg_parallel``, ...);
    ``pab_cache``: the format the presets keep outputs in (:mod:`videosys.pab.kept`; default native);
    ``prompt``: every request's caption (default :data:`DEFAULT_PROMPT`)."""
    from ..engine import VideoSysEngine

    if not torch.cuda.is_available() and device.startswith("cuda") and not (engine_kwargs or {}).get("ray_address"):
        raise ValueError("device: 'cuda' not available (videosys bench measures a GPU; pass --device cpu for a dry run)")
    engine = VideoSysEngine(model, weights=weights, device=device, dtype=dtype, progress=False,
                            **(engine_kwargs or {}))
    try:
        return _bench(engine, pab, repeats, warmup, dict(overrides or {}), prompt or DEFAULT_PROMPT, pab_cache)
    finally:
        engine.shutdown()


def _bench(engine: Any, pab: Sequence[str] | None, repeats: int, warmup: int, overrides: dict[str, Any],
           prompt: str, pab_cache: str | None = None) -> BenchReport:
    from ..pab import with_cache_format

    presets = pab if pab is not None else sorted(engine.config.pab.presets)
    requests = {"none": engine.make_request(prompt, pab="none", **overrides)}
    for preset in presets:
        request = engine.make_request(prompt, pab=with_cache_format(preset, pab_cache), **overrides)
        requests[request.pab.label] = request
    settings = list(requests)
    dev = engine.device
    local = engine.layout.world_size == 1
    cuda = dev.type == "cuda" and local
    gemm = measure_gemm_tflops(engine.dtype, dev) if cuda else float("nan")
    calls = 0
    call_flops = executed_flops = 0
    if local:
        pipeline = local_pipeline(engine)
        denoiser = pipeline.transformer
        counter = _FirstCallFlops(denoiser, unfolded=True)  # the model's work: the floor
        executed = _FirstCallFlops(denoiser, skip_calls=1)  # the work one call runs

        def count_call(*_: Any) -> None:
            nonlocal calls
            calls += 1

        handle = denoiser.register_forward_pre_hook(count_call)
        graphs, pipeline.cuda_graphs = pipeline.cuda_graphs, False  # every call of this one runs the model's forward
        try:
            # warm-up, FLOPs of one call, calls per request
            first = engine.generate_requests([requests["none"]])[0]
        finally:
            counter.remove()
            executed.remove()
            handle.remove()
            pipeline.cuda_graphs = graphs
        call_flops = counter.flops
        executed_flops = executed.flops if calls > 1 else call_flops
    else:
        engine.load()  # start the pool outside the timings
        first = None  # the settings' own warm-up requests are the ranks' first
    results = []
    for name in settings:
        timings: dict[str, list[float]] = {k: [] for k in STAGES}
        peak = float("nan") if not cuda else 0.0
        last = None
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            last = engine.generate_requests([requests[name]])[0]
            if i >= warmup:
                for k in STAGES:
                    if k in last.timings:
                        timings[k].append(last.timings[k])
                if cuda:
                    peak = max(peak, torch.cuda.max_memory_allocated(dev) / 2**30)
        stages = {k: statistics.median(v) for k, v in timings.items() if v}
        per_call = stages["denoise"] / calls * 1e3 if calls else float("nan")
        results.append(SettingResult(pab=name, runs=repeats, stages_s=stages, per_call_ms=per_call, peak_gib=peak,
                                     pab_stats=last.pab_stats if last else {},
                                     pab_kept_gib=last.pab_peak_kept_bytes / 2**30 if last else 0.0,
                                     comm_stats=last.comm_stats if last else {},
                                     replayed_calls=last.replayed_calls if last else 0))
        logger.info("%s PAB %s: %s", engine.model, name, stages)
    req = requests["none"]
    floor_ms = call_flops / (gemm * 1e12) * 1e3 if cuda else float("nan")
    versions = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else dev.type
    return BenchReport(model=engine.model, device=name, versions=versions,
                       request={"frames": req.frames, "height": req.height, "width": req.width, "steps": req.steps,
                                "guidance": req.guidance, "dtype": str(engine.dtype).removeprefix("torch.")},
                       denoiser_calls=calls, gemm_tflops=gemm, call_tflop=call_flops / 1e12,
                       executed_call_tflop=executed_flops / 1e12,
                       floor_call_ms=floor_ms, settings=results, layout=engine.layout.describe(),
                       compiled=engine.compile,
                       first_request_s=first.timings["total"] if first is not None else float("nan"))
