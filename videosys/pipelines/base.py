"""What every pipeline shares: the loading contract, stage timing, seeded noise and frame conversion."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import RequestError
from ..models.offload import DeviceVisits
from ..pab import PABRun, PABScheduler, PABStats
from ..parallel import ParallelState, comm
from ..request import GenerationRequest
from ..result import GenerationResult
from .cuda_graph import GraphedDenoiser, graphs_apply

logger = logging.getLogger(__name__)


class Pipeline(ABC):
    """A loaded model family: its checkpoint folders and how one request becomes a video.

    In a parallel layout (``parallel``, a :class:`ParallelState`) every rank of the request builds the same
    pipeline and runs ``generate`` on the same request: rank 0 (the driver) encodes the text once and shares
    it, the denoiser is split by sequence and/or CFG branch, the VAE decode is split across the ranks, and
    only the driver returns a result (the others return ``None``).
    """

    #: subfolders a checkpoint of this pipeline must have
    components: Sequence[str] = ()
    #: whether the denoiser's block pieces run through torch.compile (:meth:`enable_compile`)
    compile_denoiser: bool = False
    #: whether the denoiser may use fused Triton kernels where they apply (:meth:`disable_fused_kernels`)
    fused_kernels: bool = True
    #: whether the denoiser's blocks run float8 linears where they apply (:meth:`enable_float8`)
    float8: bool = False
    #: whether a request's denoiser calls may replay CUDA graphs where the GPU waits on the host (:meth:`denoiser_calls`)
    cuda_graphs: bool = True
    #: the text encoder's host copies while it is offloaded (:meth:`enable_text_encoder_offload`)
    text_encoder_visits: DeviceVisits | None = None
    parallel: ParallelState
    device: torch.device

    @classmethod
    @abstractmethod
    def load(cls, checkpoint: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
             parallel: ParallelState | None = None) -> Pipeline: ...

    def disable_fused_kernels(self) -> None:
        """Keep the denoiser on the torch path where a fused kernel would apply (:mod:`videosys.kernels`),
        from now on (a transformer loaded later too: :meth:`apply_denoiser_options`)."""
        self.fused_kernels = False
        self.apply_denoiser_options()

    def apply_denoiser_options(self) -> None:
        """Apply this pipeline's denoiser options (fused kernels off, ``torch.compile``) to its current
        transformer: when an option is switched and after another transformer loads."""
        from videosys.kernels import use_fused_kernels
        from videosys.kernels.float8 import float8_unavailable
        from videosys.models.compile import compile_pieces
        from videosys.models.layers.float8 import use_float8

        if not self.fused_kernels:
            use_fused_kernels(self.transformer, False)
        if self.float8:
            unavailable = float8_unavailable(self.device)
            if unavailable:  # no e4m3 copies that could never run
                logger.warning("float8: %s; the denoiser runs unchanged", unavailable)
            elif not use_float8(self.transformer):
                logger.warning("float8: %s has no blocks that run float8 linears; it runs unchanged",
                               type(self.transformer).__name__)
            elif self.compile_denoiser or not self.fused_kernels:
                logger.warning("float8 linears run only in eager mode with the fused kernels on: compiled or "
                               "torch-path blocks keep their bf16 / fp16 linears")
        if self.compile_denoiser:
            compile_pieces(self.transformer)

    def disable_cuda_graphs(self) -> None:
        """Run every denoiser call eagerly from now on (no CUDA graph replays: :meth:`denoiser_calls`)."""
        self.cuda_graphs = False

    def denoiser_calls(self, run: PABRun, call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``call`` (one denoiser call of a request: its per-step tensors in, the output out), wrapped to be
        replayed from CUDA graphs where the GPU waits on the host (:mod:`videosys.pipelines.cuda_graph`: one
        CUDA rank, eager blocks, no PAB observer), else ``call`` itself."""
        if self.cuda_graphs and graphs_apply(self.device, self.parallel.world_size, self.compile_denoiser, run):
            return GraphedDenoiser(call, run)
        return call

    def enable_float8(self) -> None:
        """Run the denoiser's block linears that read the norm + modulation (and the MLP's second linear,
        Open-Sora's cross-attention q linear, or its first folded GEMM) in float8 e4m3 from now on, where that applies
        (:mod:`videosys.kernels.float8`: eager CUDA on a GPU of compute capability 8.9+; changes the numbers
        by a few percent per linear)."""
        self.float8 = True
        self.apply_denoiser_options()

    def enable_compile(self) -> None:
        """Run the denoiser's broadcastable block pieces through ``torch.compile`` from now on (a transformer
        loaded later, e.g. another Open-Sora-Plan variant, is compiled too)."""
        self.compile_denoiser = True
        self.apply_denoiser_options()

    def enable_text_encoder_offload(self) -> None:
        """Keep the text encoder in (pinned) host memory and put it on the device only while it encodes
        (:mod:`videosys.models.offload`); a no-op on ranks without one (on a CPU device the visits copy
        nothing)."""
        encoder = getattr(self, "text_encoder", None)
        if encoder is None or self.text_encoder_visits is not None:
            return
        self.text_encoder_visits = DeviceVisits(encoder)
        logger.info("text encoder offloaded to host memory (%.2f GiB)", self.text_encoder_visits.nbytes / 2**30)

    @contextmanager
    def text_encoder_on_device(self) -> Iterator[None]:
        """The ``with`` body may run the text encoder: on the device, also when it is offloaded."""
        if self.text_encoder_visits is None:
            yield
            return
        with self.text_encoder_visits.on(self.device):
            yield

    def check(self, request: GenerationRequest) -> None:
        """Raise if this loaded checkpoint or layout cannot serve ``request`` (called for every request
        before any runs)."""
        if self.parallel.cfg_enabled and request.guidance <= 1.0:
            raise RequestError("guidance", request.guidance,
                               "> 1 with CFG parallel (guidance <= 1 has no unconditional branch to run)")

    # -- what the parallel layout changes in every pipeline ------------------------------------------------
    def shared(self, make: Callable[[], tuple[torch.Tensor | None, ...]]) -> tuple[torch.Tensor | None, ...]:
        """``make()`` on the driver only (text encoding), its tensors broadcast to every rank."""
        if self.parallel.world_size == 1:
            return make()
        return comm.broadcast_tensors(make() if self.parallel.is_driver else None, self.parallel, self.device)

    def cfg_branch(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's half of a CFG batch ``[branch 0, branch 1]`` under CFG parallel, else the whole batch."""
        if not self.parallel.cfg_enabled:
            return batch
        return batch.chunk(2)[self.parallel.cfg_rank]

    def cfg_join(self, out: torch.Tensor) -> torch.Tensor:
        """The full CFG batch of denoiser outputs on every rank (the inverse of :meth:`cfg_branch`)."""
        if not self.parallel.cfg_enabled:
            return out
        return torch.cat(comm.cfg_all_gather(out, self.parallel))

    def pab_run(self, request: GenerationRequest, call_timesteps: Sequence[float]) -> PABRun:
        """The request's PAB run over its denoiser calls, with the request's observer (if any) attached."""
        return PABScheduler(request.pab).new_run(call_timesteps, observer=request.pab_observer)

    def comm_stats(self) -> dict[str, dict[str, int]]:
        """Collectives of the current request summed over its ranks (empty on one rank)."""
        if self.parallel.world_size == 1:
            return {}
        return comm.sum_stats(self.parallel)

    def finish(self, request: GenerationRequest, frames: np.ndarray | None, timings: dict[str, float],
               pab_stats: PABStats, replayed: int = 0) -> GenerationResult | None:
        """The request's result on the driver (``None`` on the other ranks, whose ``frames`` are ``None``);
        ``replayed``: its denoiser calls replayed from CUDA graphs. Every rank calls it: the comm stats are
        summed over the ranks."""
        comm_stats = self.comm_stats()
        if frames is None:
            return None
        return GenerationResult(frames=frames, fps=request.fps, request=request, timings=timings,
                                pab_stats=pab_stats.as_dict(), pab_peak_kept_bytes=pab_stats.peak_kept_bytes,
                                model=self.config.name, comm_stats=comm_stats, replayed_calls=replayed)

    @abstractmethod
    def generate(self, request: GenerationRequest, progress: bool = True) -> GenerationResult: ...


class StageTimer:
    """Wall-clock seconds per named stage; on CUDA it synchronises so the numbers are the GPU's work."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def initial_noise(shape: Sequence[int], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise from a per-request CPU generator: the same seed gives the same noise on every device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    video = (video.float() / 2 + 0.5).clamp(0, 1)
    return (video.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


def transformers_dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; pass whichever this version takes."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def load_hf_component(cls: type, folder: Path, dtype: torch.dtype, device: torch.device | None,
                      load_kwargs: dict[str, object]) -> torch.nn.Module:
    """A transformers / diffusers model folder: ``cls.from_pretrained(folder, **load_kwargs)``, or for a random
    component (see :mod:`videosys.models.random_init`) the same architecture built from its config with
    random weights drawn on ``device``."""
    from ..models.random_init import build_random, is_random_component

    if not is_random_component(folder):
        return cls.from_pretrained(folder, **load_kwargs)
    if hasattr(cls, "load_config"):  # diffusers
        config = cls.load_config(folder)
        return build_random(lambda: cls.from_config(config), folder, dtype, device)
    config = cls.config_class.from_pretrained(folder)  # transformers
    return build_random(lambda: cls(config), folder, dtype, device)


def load_t5(checkpoint: Path, dtype: torch.dtype, encoder: bool = True,
            device: torch.device | None = None) -> tuple[object, torch.nn.Module | None]:
    """The T5 tokenizer and encoder of a checkpoint folder: weights in ``text_encoder/``, tokenizer files in
    ``tokenizer/`` or, as in the DeepFloyd repository, next to the weights. ``encoder=False`` skips the
    weights (ranks that never encode text)."""
    from transformers import AutoTokenizer, T5EncoderModel

    from ..errors import WeightsNotFoundError

    tokenizer_dir = checkpoint / "tokenizer" if (checkpoint / "tokenizer").is_dir() else checkpoint / "text_encoder"
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        text_encoder = (load_hf_component(T5EncoderModel, checkpoint / "text_encoder", dtype, device,
                                          transformers_dtype_kwarg(dtype)) if encoder else None)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"weights: could not load the T5 text encoder of {str(checkpoint)!r}: {exc}") from None
    return tokenizer, text_encoder
