"""VideoSysEngine: the one object users hold. It owns the registry lookup, the model config, the default
PAB setting and the executor, and validates every request before any model work."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import torch

from .errors import RequestError, VideoSysError
from .io.checkpoint import resolve_checkpoint
from .io.random_checkpoint import RANDOM_WEIGHTS, random_checkpoint
from .pab import PABConfig, PABConfigError, resolve_pab
from .registry import ModelRegistry, default_registry
from .request import GenerationRequest, build_request
from .result import GenerationResult
from .parallel import ParallelConfig
from .runtime import Executor, LocalExecutor, PipelineSpec, PoolLayout, RayExecutor

logger = logging.getLogger(__name__)

_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


def resolve_device(device: str | torch.device | None, pool: bool = False, cluster: bool = False) -> torch.device:
    """The device of a local run, or with ``pool`` the kind every rank of a worker pool takes one of ("cpu" or
    "cuda"; on a ``cluster`` the GPUs are the workers', so this machine needs none)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RequestError("device", device, "cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise RequestError("device", device, "cpu, cuda or cuda:N")
    if pool and dev.index is not None:
        raise RequestError("device", device, "cpu or cuda for a worker pool (each rank gets its own GPU)")
    if dev.type == "cuda" and not cluster:
        if not torch.cuda.is_available():
            raise RequestError("device", device, "cpu (no CUDA device is visible)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RequestError("device", device, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, default: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise RequestError("dtype", str(dtype), "float16, bfloat16, float32")
        return dtype
    name = default if dtype is None else str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise RequestError("dtype", dtype, "float16, bfloat16, float32 (or fp16, bf16, fp32)")
    return _DTYPES[name]


class VideoSysEngine:
    """Generate videos with one registered model.

    ``weights`` is a local checkpoint folder or a hub id (hub only when online); ``None`` takes the model's
    bundled default; ``"random"`` builds the official architecture at full size with random weights drawn
    on the device (benchmarks without a download; the videos are noise). ``pab`` is the default PAB setting of requests: ``None``/``"none"`` off, a preset name
    (``"pab236"``), ``"default"``, a YAML path, a mapping or a :class:`~videosys.pab.PABConfig`.
    The pipeline is loaded on the first ``generate`` (or :meth:`load`), after the requests validate.

    Several devices: ``world_size`` ranks in a Ray worker pool (one GPU each, or with ``device="cpu"`` one CPU
    process each over gloo), ``sp`` of them sharing each request's sequence and, with ``cfg_parallel``, twice
    as many splitting the guidance branches; the rest serve other requests at the same time (data parallel).
    ``ray_address`` joins a Ray cluster (``"auto"`` or an address) instead of starting Ray here; ``placement``
    "pack" (default) or "spread" places the ranks over its nodes; ``timeout_s`` bounds every wait of the pool.
    Use the engine as a context manager, or call :meth:`shutdown`, to stop the pool.
    ``compile=True`` runs the denoiser's block pieces through ``torch.compile`` on every rank
    (:mod:`videosys.models.compile`; the first request of each size pays the compilation; outputs move within
    the dtype's rounding). ``offload_text_encoder=True`` keeps the text encoder in pinned host memory and puts
    it on the device only to encode a prompt (:mod:`videosys.models.offload`: its memory stays free for
    denoising, for one host-to-device copy per request). ``fused_kernels=False`` keeps the denoiser's
    attention on the torch path where a fused Triton kernel would apply (:mod:`videosys.kernels`; on by
    default, used only on CUDA devices with Triton). ``float8=True`` runs the denoiser blocks' linears that
    read the norm + modulation, the MLP's second linear and (Open-Sora) the cross-attention's q linear, or
    where its caption folds the first folded GEMM (:mod:`videosys.models.layers.folded_attention`), in
    float8 e4m3 with the activations quantized by the kernels that make them
    (:mod:`videosys.kernels.float8`; eager CUDA on compute capability 8.9+, i.e. Ada / Hopper; faster, and
    changes the numbers by a few percent per linear: off by default).
    ``cuda_graphs=False`` runs every denoiser call eagerly; by default a request's calls replay CUDA graphs
    (one per PAB pattern) where its second call shows the GPU waiting on the host, as at small sizes (one
    CUDA rank, no ``compile``: :mod:`videosys.pipelines.cuda_graph`; the same numbers, one host launch per
    call).
    """

    def __init__(
        self,
        model: str = "latte",
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        pab: Any = None,
        *,
        registry: ModelRegistry | None = None,
        progress: bool = True,
        world_size: int = 1,
        sp: int = 1,
        cfg_parallel: bool = False,
        ray_address: str | None = None,
        placement: str = "pack",
        timeout_s: float = 1800.0,
        compile: bool = False,
        offload_text_encoder: bool = False,
        fused_kernels: bool = True,
        float8: bool = False,
        cuda_graphs: bool = True,
    ) -> None:
        layout = PoolLayout(world_size, ParallelConfig(sp=sp, cfg=cfg_parallel))  # bad layouts fail first
        pool = world_size > 1 or ray_address is not None
        self.registry = registry or default_registry()
        self.spec = self.registry.get(model)
        base_config = self.spec.load_config()
        pipeline_cls = self.spec.pipeline_class()
        random_weights = isinstance(weights, str) and weights == RANDOM_WEIGHTS
        self.checkpoint = random_checkpoint(self.spec.name) if random_weights else resolve_checkpoint(
            weights,
            default=base_config.weights_default,
            official=base_config.weights_official,
            components=pipeline_cls.components,
            what=self.spec.name,
        )
        self.config = base_config.with_checkpoint_overlay(self.checkpoint)
        self.device = resolve_device(device, pool=pool, cluster=ray_address is not None)
        self.dtype = resolve_dtype(dtype, self.config.dtype_cuda if self.device.type == "cuda" else self.config.dtype_cpu)
        try:
            self.default_pab: PABConfig = resolve_pab(pab, self.config.pab)
        except PABConfigError as exc:
            raise RequestError("pab", pab, str(exc)) from None
        self.progress = progress
        self.random_weights = random_weights
        self.compile = bool(compile)
        self.offload_text_encoder = bool(offload_text_encoder)
        self.fused_kernels = bool(fused_kernels)
        self.float8 = bool(float8)
        self.cuda_graphs = bool(cuda_graphs)
        spec = self.pipeline_spec()
        self.layout = layout
        self._executor: Executor = (RayExecutor(spec, layout, address=ray_address, placement=placement,
                                                timeout_s=timeout_s) if pool else LocalExecutor(spec.build))
        logger.info("engine: model %s, weights %s, %s %s, pab %s, %s", self.spec.name, self.checkpoint, self.device,
                    self.dtype, self.default_pab.name, layout.describe())

    def pipeline_spec(self) -> PipelineSpec:
        """What a rank needs to build this engine's pipeline (picklable; used by the parallel runners)."""
        return PipelineSpec(pipeline=self.spec.pipeline, checkpoint=self.checkpoint, config=self.config,
                            device=str(self.device), dtype=self.dtype,
                            random_of=self.spec.name if self.random_weights else None, compile=self.compile,
                            offload_text_encoder=self.offload_text_encoder, fused_kernels=self.fused_kernels,
                            float8=self.float8, cuda_graphs=self.cuda_graphs)

    @property
    def model(self) -> str:
        return self.spec.name

    def load(self) -> VideoSysEngine:
        """Load the pipeline now (start the worker pool) instead of on the first request."""
        if isinstance(self._executor, LocalExecutor):
            _ = self._executor.pipeline
        elif isinstance(self._executor, RayExecutor):
            self._executor.start()
        return self

    def make_request(self, prompt: str, **overrides: Any) -> GenerationRequest:
        """Build and validate one request (defaults of the model + overrides); no model work."""
        return build_request(prompt, self.config, self.default_pab, overrides)

    @overload
    def generate(self, prompt: str, **overrides: Any) -> GenerationResult: ...
    @overload
    def generate(self, prompt: Sequence[str], **overrides: Any) -> list[GenerationResult]: ...

    def generate(self, prompt: str | Sequence[str], **overrides: Any) -> GenerationResult | list[GenerationResult]:
        """Generate one video per prompt. A list in gives a list out, in order. Overrides: negative_prompt,
        seed, frames, height, width, steps, guidance, fps, pab. Every request is validated first."""
        single = not isinstance(prompt, (list, tuple))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise RequestError("prompt", prompt, "a non-empty string or a non-empty list of strings")
        requests = []
        for i, text in enumerate(prompts):
            try:
                requests.append(self.make_request(text, **overrides))
            except RequestError as exc:
                if single:
                    raise
                raise RequestError(f"prompt[{i}].{exc.field}", exc.value, exc.allowed) from None
        results = self._executor.run(requests, progress=self.progress)
        return results[0] if single else results

    @property
    def concurrency(self) -> int:
        """How many requests this engine serves at the same time (its data-parallel groups)."""
        return self._executor.concurrency

    def generate_requests(self, requests: Sequence[GenerationRequest],
                          return_exceptions: bool = False) -> list[GenerationResult | Exception]:
        """Run requests built by :meth:`make_request`, results in request order. With ``return_exceptions`` a
        failed request's exception stands in its place and the others still run (what batch jobs use)."""
        return self._executor.run(list(requests), progress=self.progress, return_exceptions=return_exceptions)

    def shutdown(self) -> None:
        self._executor.shutdown()

    def __enter__(self) -> VideoSysEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["VideoSysEngine", "VideoSysError"]
