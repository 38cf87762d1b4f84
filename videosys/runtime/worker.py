"""What one rank runs, however its process was started (spawned locally, or a Ray actor): build the pipeline
from a picklable :class:`PipelineSpec` with this rank's :class:`ParallelState`, check every request, then
generate them in order. Only the driver (rank 0) returns results."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..parallel import ParallelConfig, ParallelState
from ..pipelines.base import Pipeline
from ..request import GenerationRequest
from ..result import GenerationResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a rank needs to build the pipeline: sent to worker processes, so plain data only."""

    pipeline: str  # "module:Class"
    checkpoint: Path
    config: ModelConfig
    device: str  # "cpu", "cuda" (rank r of a node takes its r-th visible GPU) or "cuda:N"
    dtype: torch.dtype
    random_of: str | None = None  # random full-size weights of this model (rebuilt where the folder is missing)
    compile: bool = False  # torch.compile the denoiser's block pieces (videosys.models.compile)
    offload_text_encoder: bool = False  # text encoder in host memory between requests (videosys.models.offload)
    fused_kernels: bool = True  # fused Triton kernels where they apply (videosys.kernels)
    float8: bool = False  # float8 block linears where they apply (videosys.kernels.float8)
    cuda_graphs: bool = True  # denoiser calls replayed from CUDA graphs where the GPU waits on the host

    def device_for(self, local_rank: int = 0) -> torch.device:
        device = torch.device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return device

    def build(self, parallel: ParallelState | None = None, local_rank: int = 0) -> Pipeline:
        module_name, _, class_name = self.pipeline.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        device = self.device_for(local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        checkpoint = self.checkpoint
        if self.random_of is not None and not checkpoint.is_dir():  # another node of a cluster
            from ..io.random_checkpoint import random_checkpoint

            checkpoint = random_checkpoint(self.random_of)
        pipeline = cls.load(checkpoint, self.config, device, self.dtype, parallel=parallel)
        if not self.fused_kernels:
            pipeline.disable_fused_kernels()
        if self.float8:
            pipeline.enable_float8()
        if not self.cuda_graphs:
            pipeline.disable_cuda_graphs()
        if self.compile:
            pipeline.enable_compile()
        if self.offload_text_encoder:
            pipeline.enable_text_encoder_offload()
        return pipeline


def run_rank(rank: int, world_size: int, spec: PipelineSpec, parallel: ParallelConfig,
             requests: Sequence[GenerationRequest], progress: bool = False) -> list[GenerationResult] | None:
    """One rank of a parallel run over an initialised process group: every rank gets the same requests."""
    state = ParallelState.create(parallel)
    pipeline = spec.build(state, local_rank=rank)
    for request in requests:
        pipeline.check(request)
    results = [pipeline.generate(request, progress=progress) for request in requests]
    if not state.is_driver:
        return None
    return results
