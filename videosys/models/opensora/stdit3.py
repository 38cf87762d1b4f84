"""Open-Sora 1.2 denoiser (STDiT3), checkpoint-compatible with ``hpcai-tech/OpenSora-STDiT-v3``.

The checkpoint is a transformers ``PreTrainedModel`` folder: ``config.json`` (model_type ``"STDiT3"``) and
an fp32 ``model.safetensors``. :meth:`STDiT3.from_pretrained` builds the model on the meta device, checks
every key and shape, and casts the tensors to the requested dtype.

Structure (``C`` = hidden size, ``S`` = patches per frame, ``T`` = latent frames)::

    x [B, in, T, H, W] --pad to patch multiples--> Conv3d patches [B, T*S, C] (frame-major)
      + 2D sin-cos position table (one table for every frame, its scale follows the *pixel* size)
    t = t_embedder(timestep) + fps_embedder(fps);  t_mlp = t_block(t)  (adaLN-single, 6 rows per sample)
    y = y_embedder(caption)  (once per forward)
    for d in 0..depth-1: spatial_blocks[d], then temporal_blocks[d]
    final_layer (modulated by t) -> unpatchify -> crop the padding -> float32

Each block: ``x += gate_msa * self_attn(modulate(LN(x)))``; ``x += cross_attn(x, y)``;
``x += gate_mlp * mlp(modulate(LN(x)))``. Spatial blocks attend over the ``S`` tokens of a frame, temporal
blocks over the ``T`` frames of a spatial position, with RoPE on their q/k (after the qk RMS-norm).
Every block, temporal ones included, has cross-attention; a sample's tokens attend only to that sample's
valid text tokens.

Timestep rounding: the official model casts the timestep to its (bf16) dtype before embedding it, so
e.g. 977.3 is embedded as 976. This model rounds the timestep through bf16 by default whatever its own
dtype (``round_timestep=True``), so that an fp32 run reproduces the conditioning of the official bf16
run. Pass ``round_timestep=False`` to embed the timestep as given.

Pyramid Attention Broadcast: the spatial self-attention (kind ``"spatial"``), the temporal
self-attention (``"temporal"``), the cross-attention of both block types (``"cross"``, site
``"spatial"``/``"temporal"``) and the MLPs (``"mlp"``, site ``"spatial"``/``"temporal"``) go through
:func:`videosys.pab.run_module` with the depth index as block. As in the reference, what is computed
and kept is the module output *after* its gate (``gate_msa * attn``, ``gate_mlp * mlp``) and the raw
cross-attention output; each ``fn`` holds the norm, modulation and attention, so a broadcast skips it all.
The gated modules add their output to the residual stream in the gate's pass
(:func:`videosys.pab.run_residual`); the gated product is written out only on the calls that keep it.

Sequence parallel (``forward(..., parallel=state)`` with ``state.sp_size = P > 1``): every SP rank runs the
same forward on its share of the spatial tokens. After the patch embedding and the position table,
``[B, T, S, C]`` is split along ``S`` (:func:`videosys.parallel.comm.shard`: padded to ``P * ceil(S / P)``,
rank ``r`` keeps ``S' = ceil(S / P)`` tokens of every frame; the padding tokens ride along and are dropped
wherever ``S`` is gathered). Temporal blocks (attention over ``T`` with RoPE, cross-attention, MLP) and the
spatial blocks' cross-attention and MLP are per-token, so they run on the local tokens without any
communication. The spatial self-attention does an all-to-all (scatter the ``B*T`` frames, gather the true
``S``: all tokens of ``ceil(B*T / P)`` frames), attends, and does the inverse all-to-all; both live inside the function
PAB wraps, so a broadcast step skips them with the attention. The final layer is per-token too and
narrower than ``C``, so it runs on the local tokens and its output is all-gathered along ``S``: every SP rank
returns the full prediction. PAB then keeps local shards, each rank reusing only its own.

Not supported (inference only): the video-to-video temporal mask ``x_mask``, dropout/drop-path,
``skip_y_embedder``. The kernel and training flags of the config are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn

from videosys.kernels import fused_temporal_attention, fused_temporal_attention_applies
from videosys.kernels.float8 import Float8Rows
from videosys.pab import PABRun, run_module, run_residual
from videosys.parallel import ParallelState, comm

from ..config_values import is_int, is_number
from ..layers.float8 import linear, mlp_gelu_tanh
from ..layers.attention import scaled_dot_product
from ..layers.embeddings import timestep_sinusoids
from ..layers.folded_attention import FoldedContextCache, attend_module_folded, folded_kernel_path, folds
from ..layers.norms import RMSNorm, add_norm_modulate, gated_add, gated_add_float8, modulate, norm_modulate
from ..layers.rope import RotaryEmbedding, apply_rotary
from ..weights import load_pretrained

logger = logging.getLogger(__name__)

__all__ = ["PreparedCaption", "STDiT3", "STDiT3Block", "STDiT3Config", "spatial_pos_table"]

MODEL_TYPE = "STDiT3"
WEIGHTS_NAME = "model"
DEFAULT_FPS = 24.0
LATENT_TO_PIXEL = 8
NORM_EPS = 1e-6
FREQ_CHANNELS = 256

#: config.json keys written by transformers itself; ignored.
_BOOKKEEPING_KEYS = frozenset({"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path"})
#: training / kernel switches of the official config; accepted, without effect at inference.
_IGNORED_FLAGS = (
    "class_dropout_prob",
    "drop_path",
    "enable_flash_attn",
    "enable_layernorm_kernel",
    "enable_sequence_parallelism",
    "only_train_temporal",
    "freeze_y_embedder",
)

TensorOrNumber = Union[torch.Tensor, int, float]


# -- config -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class STDiT3Config:
    """Fields of the official ``config.json`` (``STDiT3Config``); the defaults are the released model's.

    ``input_size`` is carried for completeness (the model is size-agnostic). ``class_dropout_prob``,
    ``drop_path`` and the ``enable_*`` / ``only_train_temporal`` / ``freeze_y_embedder`` switches only matter
    for training or kernel selection and are ignored. ``skip_y_embedder`` must be false.
    """

    input_size: tuple[int | None, ...] | None = (None, None, None)
    input_sq_size: int = 512
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    only_train_temporal: bool = False
    freeze_y_embedder: bool = False
    skip_y_embedder: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so the config stays hashable.
        if isinstance(self.patch_size, list):
            object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"STDiT3 config {field}: {getattr(self, field)!r} not allowed (allowed: {allowed})")

        ps = self.patch_size
        if not isinstance(ps, tuple) or len(ps) != 3 or not all(is_int(p) and p >= 1 for p in ps):
            raise bad("patch_size", "3 positive integers [t, h, w]")
        ins = self.input_size
        if ins is not None and (
            not isinstance(ins, tuple) or len(ins) != 3 or not all(v is None or (is_int(v) and v > 0) for v in ins)
        ):
            raise bad("input_size", "null or 3 entries, each null or a positive integer")
        for field in ("in_channels", "hidden_size", "depth", "num_heads", "caption_channels", "model_max_length"):
            v = getattr(self, field)
            if not is_int(v) or v < 1:
                raise bad(field, "a positive integer")
        if not is_number(self.input_sq_size) or self.input_sq_size <= 0:
            raise bad("input_sq_size", "a positive number")
        if not is_number(self.mlp_ratio) or self.mlp_ratio <= 0 or int(self.hidden_size * self.mlp_ratio) < 1:
            raise bad("mlp_ratio", "a positive number")
        if self.hidden_size % self.num_heads != 0:
            raise bad("hidden_size", f"a multiple of num_heads ({self.num_heads})")
        if self.hidden_size % 4 != 0:
            raise bad("hidden_size", "a multiple of 4 (the 2D sin-cos position table)")
        if (self.hidden_size // self.num_heads) % 2 != 0:
            raise bad("hidden_size", f"hidden_size / num_heads even (RoPE pairs channels), num_heads {self.num_heads}")
        for field in ("pred_sigma", "qk_norm"):
            if not isinstance(getattr(self, field), bool):
                raise bad(field, "true or false")
        if self.skip_y_embedder is not False:
            raise bad("skip_y_embedder", "false (pre-embedded captions are not supported)")

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        """``2 * in_channels`` with a learned sigma (``pred_sigma``), else ``in_channels``."""
        return 2 * self.in_channels if self.pred_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    # -- (de)serialisation ------------------------------------------------------------------------------------
    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> STDiT3Config:
        """Build from the official ``config.json`` dict.

        transformers bookkeeping keys are dropped, unknown keys ignored (debug log), the training/kernel
        switches logged at debug. A ``model_type`` other than ``"STDiT3"`` is a ``ValueError``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"STDiT3 config: expected a mapping, got {type(data).__name__}")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"STDiT3 config model_type: {model_type!r} not allowed (allowed: {MODEL_TYPE!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names and k not in _BOOKKEEPING_KEYS)
        if unknown:
            logger.debug("STDiT3 config: ignoring unknown keys %s", unknown)
        flags = {k: data[k] for k in _IGNORED_FLAGS if k in data}
        if flags:
            logger.debug("STDiT3 config: training/kernel switches without effect here: %s", flags)
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json_dict(self) -> dict[str, Any]:
        """The official ``config.json`` fields (no transformers bookkeeping keys)."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        out["input_size"] = None if self.input_size is None else list(self.input_size)
        return out


# -- position table ---------------------------------------------------------------------------------------


def spatial_pos_table(
    dim: int,
    grid_h: int,
    grid_w: int,
    scale: float,
    base_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Open-Sora's 2D sin-cos table ``[grid_h * grid_w, dim]`` (float32), tokens in row-major order.

    Coordinates: ``row_i = i / scale * (base_size / grid_h)``, ``col_j = j / scale * (base_size / grid_w)``
    with ``base_size = round(sqrt(grid_h * grid_w))`` by default. Token ``(i, j)`` gets
    ``[sin(col_j w) | cos(col_j w) | sin(row_i w) | cos(row_i w)]`` with ``w_k = 1 / 10000^(2k / (dim/2))``,
    ``k < dim / 4``: the first half of the channels encodes the column, the second half the row.
    """
    if dim % 4 != 0:
        raise ValueError(f"2D sin-cos table dim must be a multiple of 4, got {dim}")
    if base_size is None:
        base_size = round(math.sqrt(grid_h * grid_w))
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half))
    rows = torch.arange(grid_h, device=device, dtype=torch.float32) / scale * (base_size / grid_h)
    cols = torch.arange(grid_w, device=device, dtype=torch.float32) / scale * (base_size / grid_w)
    col_ang = (cols[:, None] * inv_freq[None, :])[None, :, :].expand(grid_h, grid_w, -1)
    row_ang = (rows[:, None] * inv_freq[None, :])[:, None, :].expand(grid_h, grid_w, -1)
    table = torch.cat([col_ang.sin(), col_ang.cos(), row_ang.sin(), row_ang.cos()], dim=-1)
    return table.reshape(grid_h * grid_w, dim)


# -- small modules (parameter names follow the official checkpoint) ---------------------------------------


def _sp_state(parallel: ParallelState | None) -> ParallelState:
    """The state the sequence-parallel collectives run on: without one, a single-process state, on which
    every collective (shard, all-to-all, gather) is the identity."""
    return ParallelState.single() if parallel is None else parallel


class Mlp(nn.Module):
    """``fc1`` -> tanh-GELU -> ``fc2`` (timm ``Mlp`` names)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features if out_features is None else out_features)

    def forward(self, x: torch.Tensor | Float8Rows) -> torch.Tensor:
        return mlp_gelu_tanh(x, self.fc1, self.fc2)


class SinusoidEmbedder(nn.Module):
    """256-channel ``[cos | sin]`` sinusoid of a scalar per sample, then ``mlp.0`` -> SiLU -> ``mlp.2``.

    Used for both the timestep (``t_embedder``) and the frame rate (``fps_embedder``).
    """

    def __init__(self, hidden_size: int, freq_channels: int = FREQ_CHANNELS) -> None:
        super().__init__()
        self.freq_channels = freq_channels
        self.mlp = nn.Sequential(nn.Linear(freq_channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``values`` ``[B]`` -> ``[B, C]``; the sinusoid is formed in float32 and cast to ``dtype``."""
        return self.mlp(timestep_sinusoids(values, self.freq_channels, flip_sin_to_cos=True).to(dtype))


class CaptionEmbedder(nn.Module):
    """Caption projection ``y_proj`` (``fc1`` 4096 -> C, tanh-GELU, ``fc2``) and the learned null caption.

    ``y_embedding`` ``[model_max_length, caption_channels]`` is a *persistent buffer* (in the checkpoint):
    the unconditional caption used for classifier-free guidance, cut by the prompt's mask like the prompt.
    """

    def __init__(self, caption_channels: int, hidden_size: int, token_num: int) -> None:
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``qkv`` (split as 3 x heads x head_dim), optional RMS qk-norm
    (``q_norm``, ``k_norm`` over head_dim, eps 1e-6), optional RoPE after the norm, ``proj``."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm: nn.Module = RMSNorm(self.head_dim, eps=NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = RMSNorm(self.head_dim, eps=NORM_EPS) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _project(self, x: torch.Tensor | Float8Rows, part: int) -> torch.Tensor:
        """Part ``part`` (0 q, 1 k, 2 v) of the ``qkv`` projection as a contiguous ``[N, L, heads, head_dim]``:
        its rows of the weight (a view, no copy) in one GEMM."""
        c = self.num_heads * self.head_dim
        out = linear(self.qkv, x, slice(part * c, (part + 1) * c))
        return out.view(*x.shape[:2], self.num_heads, self.head_dim)

    def forward(
        self, x: torch.Tensor | Float8Rows, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``x`` ``[N, L, C]`` (or its float8 rows) -> ``[N, L, C]``; ``rope``: float32 ``(cos, sin)``
        ``[L, head_dim]`` or ``None``."""
        n, length, c = x.shape
        v = self._project(x, 2).transpose(1, 2)  # [N, heads, L, head_dim]
        if length == 1:
            out = v  # softmax over one key is exactly 1: the output is v (no q/k, norm or RoPE needed)
        else:
            # q and k are normalised in their contiguous [N, L, heads, head_dim] layout (the fused norm would
            # first copy a strided view), then viewed as [N, heads, L, head_dim]
            q = self.q_norm(self._project(x, 0)).transpose(1, 2)
            k = self.k_norm(self._project(x, 1)).transpose(1, 2)
            if rope is not None:
                cos, sin = rope
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            out = scaled_dot_product(q, k, v)
        out = out.transpose(1, 2).reshape(n, length, c)
        return self.proj(out)

    def over_frames(
        self, x: torch.Tensor | Float8Rows, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``forward`` along the frame axis of frame-major ``x`` ``[B, T, S, C]`` (attention over ``T`` for
        each of the ``S`` positions) -> ``[B, T, S, C]``, without regrouping the tokens: the ``qkv`` GEMM,
        then qk-norm, RoPE and the attention in one kernel (:func:`videosys.kernels.fused_temporal_attention`;
        only where :func:`videosys.kernels.fused_temporal_attention_applies`), then ``proj``."""
        q_weight = self.q_norm.weight if isinstance(self.q_norm, RMSNorm) else None
        k_weight = self.k_norm.weight if isinstance(self.k_norm, RMSNorm) else None
        out = fused_temporal_attention(linear(self.qkv, x), self.num_heads, q_weight, k_weight, rope, NORM_EPS)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Video tokens attend to text tokens: ``q_linear``, ``kv_linear`` (split 2 x heads x head_dim), ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        #: a short caption is attended through the folded projections where that pays
        #: (:mod:`videosys.models.layers.folded_attention`); ``False`` keeps the unfolded path
        self.fold_short_context = True
        #: ``False`` (:func:`videosys.kernels.use_fused_kernels`): no Triton kernel, so no folding on CUDA
        self.fused_kernel = True

    def folds(self, x: torch.Tensor, keys: int) -> bool:
        """Whether tokens like ``x`` attend a caption of ``keys`` tokens folded
        (:func:`videosys.models.layers.folded_attention.folds`)."""
        return self.fold_short_context and folds(x, self.num_heads, keys, self.parameters(),
                                                 kernels=self.fused_kernel)

    def reads_float8_rows(self, x: torch.Tensor, keys: int) -> bool:
        """Whether float8 rows of tokens like ``x`` (``--float8``) feed this module over a caption of
        ``keys`` tokens: into ``q_linear`` unfolded, into the folded GEMMs on the GPU path; not into the
        CPU's folded torch ops."""
        return not self.folds(x, keys) or folded_kernel_path(x, self.num_heads, keys, self.parameters())

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None,
                x_rows: Float8Rows | None = None, folded: FoldedContextCache | None = None) -> torch.Tensor:
        """``x`` ``[B, N, C]`` attends to ``y`` ``[B, L, C]`` of the same sample; ``key_mask``: boolean
        ``[B, L]`` (``True`` = valid token) or ``None`` when every token is valid; ``x_rows``: ``x`` as
        float8 rows (``--float8``) for ``q_linear`` or the folded GEMMs (:meth:`reads_float8_rows`), or
        ``None``; ``folded``: where the caption's folded context is kept across calls (one cache per caption,
        :class:`PreparedCaption`), or ``None`` (folded anew)."""
        b, n, c = x.shape
        length = y.shape[1]
        if self.folds(x, length):
            return attend_module_folded(self, x, length, lambda: self.kv_linear(y).chunk(2, dim=-1), self.q_linear,
                                        self.proj, self.num_heads, key_mask, cache=folded, x_rows=x_rows)
        q = linear(self.q_linear, x if x_rows is None else x_rows).view(b, n, self.num_heads, self.head_dim)
        q = q.transpose(1, 2)
        kv = self.kv_linear(y).view(b, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = scaled_dot_product(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class STDiT3Block(nn.Module):
    """One spatial or temporal STDiT3 block (keys ``attn.*``, ``cross_attn.*``, ``mlp.*``, ``scale_shift_table``).

    ``x`` is always ``[B, T*S, C]`` (frame-major); the block regroups it for its self-attention.
    """

    #: the broadcastable pieces :func:`videosys.models.compile.compile_pieces` compiles
    compile_pieces: ClassVar[tuple[str, ...]] = ("self_attention", "cross_attention", "feed_forward")

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden: int, qk_norm: bool, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.kind = "temporal" if temporal else "spatial"
        self.hidden_size = hidden_size
        self.norm1 = nn.LayerNorm(hidden_size, eps=NORM_EPS, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=NORM_EPS, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, mlp_hidden)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        #: temporal blocks: attention over frames in one fused kernel where it applies (CUDA, Triton, fp16 /
        #: bf16, at most 64 frames); ``False`` keeps the torch path (:func:`videosys.kernels.use_fused_kernels`)
        self.fused_kernel = True
        #: float8 linears where they apply (opt-in: :func:`videosys.models.layers.float8.use_float8`)
        self.float8 = False

    def float8_linears(self) -> list[nn.Linear]:
        """The linears that read float8 rows when :attr:`float8` is on: the ``qkv`` and MLP linears, and the
        cross-attention's ``q_linear`` (fed by the self-attention's gate kernel; unused when the caption
        folds, whose first GEMM then reads those rows: :meth:`CrossAttention.reads_float8_rows`)."""
        return [self.attn.qkv, self.mlp.fc1, self.mlp.fc2, self.cross_attn.q_linear]

    # -- the broadcastable pieces (each returns what PAB keeps) -------------------------------------------
    def spatial_attention(
        self, h: torch.Tensor | Float8Rows, frames: int, tokens: int, parallel: ParallelState | None = None
    ) -> torch.Tensor:
        """Attention over the ``S`` = ``tokens`` tokens of each frame, as ``[B*T, S, C]``.

        ``h`` ``[B, T*S', C]`` holds this rank's ``S'`` tokens of every frame (``S' = S`` without sequence
        parallel). Under SP an all-to-all trades them for all ``S`` tokens of this rank's ``ceil(B*T / P)``
        of the ``B*T`` frames (the frames of every video in one leading dimension, so the pieces leave and
        come back without a copy around the collective) and the inverse all-to-all trades the result back
        (both are the identity otherwise).
        """
        b, n, c = h.shape
        sp = _sp_state(parallel)
        h = h.reshape(b * frames, -1, c)
        if sp.sp_enabled:  # float8 rows travel as bytes with their scales (no requantising on the way)
            def to_frames(t: torch.Tensor) -> torch.Tensor:
                return comm.all_to_all(t, sp, scatter_dim=0, gather_dim=1, gather_size=tokens)

            h = h.moved(to_frames) if isinstance(h, Float8Rows) else to_frames(h)
        h = self.attn(h)  # [F', S, C]: every token of this rank's frames
        h = comm.all_to_all(h, sp, scatter_dim=1, gather_dim=0, gather_size=b * frames)  # [B*T, S', C]
        return h.reshape(b, n, c)

    def temporal_attention(
        self, h: torch.Tensor, frames: int, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """Attention over the ``T`` frames of each spatial position held here: ``[B*S', T, C]``, RoPE on q/k
        (in the frame-major layout by one fused kernel where it applies: :meth:`SelfAttention.over_frames`)."""
        b, n, c = h.shape
        tokens = n // frames
        attn = self.attn
        if self.fused_kernel and fused_temporal_attention_applies(h, frames, attn.head_dim, attn.parameters()):
            return attn.over_frames(h.reshape(b, frames, tokens, c), rope).reshape(b, n, c)
        if isinstance(h, Float8Rows):  # regrouped below: the float8 rows are for the frame-major path only
            h = h.dequantize()
        h = h.reshape(b, frames, tokens, c).transpose(1, 2).reshape(b * tokens, frames, c)
        h = attn(h, rope=rope)
        return h.reshape(b, tokens, frames, c).transpose(1, 2).reshape(b, n, c)

    def self_attention(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        scale: torch.Tensor,
        gate: torch.Tensor,
        frames: int,
        tokens: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        parallel: ParallelState | None = None,
        *,
        keep_output: bool = True,
        sum_rows: list[Float8Rows] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x + out, out)`` with ``out = gate * attn(modulate(norm1(x)))`` (``None`` unless
        ``keep_output``): everything the self-attention costs, the spatial one's sequence-parallel
        all-to-alls included, and the residual add in the gate's pass (``out`` is what PAB keeps).

        ``sum_rows`` (float8 blocks): a list that receives ``x + out`` as float8 rows from the gate's pass,
        where its kernel applies, for the cross-attention's ``q_linear``."""
        h = norm_modulate(self.norm1, x, shift, scale, fused=self.fused_kernel, float8=self.float8)
        if self.temporal:
            h = self.temporal_attention(h, frames, rope)
        else:
            h = self.spatial_attention(h, frames, tokens, parallel)
        if sum_rows is not None:
            total, product, rows = gated_add_float8(h, gate, x, keep_product=keep_output, fused=self.fused_kernel)
            if rows is not None:
                sum_rows.append(rows)
            return total, product
        return gated_add(h, gate, x, keep_product=keep_output, fused=self.fused_kernel)

    def cross_attention(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None,
                        x_rows: Float8Rows | None = None, folded: FoldedContextCache | None = None) -> torch.Tensor:
        """Cross-attention output (no norm, no gate; kept by PAB); ``x_rows``: ``x`` as float8 rows or
        ``None``; ``folded``: the caption's folded contexts kept across calls, or ``None``."""
        return self.cross_attn(x, y, key_mask, x_rows, folded)

    def feed_forward(
        self, x: torch.Tensor, cross: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor,
        *, keep_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(r + out, out)`` with ``r = x + cross`` (the cross-attention's residual add, made in the norm's
        pass) and ``out = gate * mlp(modulate(norm2(r)))`` (``None`` unless ``keep_output``; ``out`` is what
        PAB keeps)."""
        r, h = add_norm_modulate(self.norm2, x, cross, shift, scale, fused=self.fused_kernel, float8=self.float8)
        return gated_add(self.mlp(h), gate, r, keep_product=keep_output, fused=self.fused_kernel)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        key_mask: torch.Tensor | None,
        t_mlp: torch.Tensor,
        frames: int,
        tokens: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        pab: PABRun | None = None,
        block: int = 0,
        parallel: ParallelState | None = None,
        folded: FoldedContextCache | None = None,
    ) -> torch.Tensor:
        """One block step.

        Args:
            x: ``[B, T*S', C]`` tokens, frame-major: this rank's ``S'`` tokens of every frame (``S' = S``
                without sequence parallel).
            y: embedded text ``[B, L, C]``; ``key_mask`` its boolean ``[B, L]`` validity or ``None``.
            t_mlp: ``[B, 6C]`` adaLN-single rows.
            frames, tokens: ``T`` and the true ``S`` (all ranks together).
            rope: ``(cos, sin)`` tables for ``T`` positions (used by temporal blocks only).
            pab: the request's PAB run or ``None``; block: the depth index.
            parallel: this rank's parallel state (``None``: one process); only the spatial self-attention
                communicates.
            folded: the caption's folded cross-attention contexts, kept across calls (``None``: folded
                anew).
        """
        b, _, c = x.shape
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, c)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each [B, 1, C]
        site = self.kind

        x_attn_in = x
        # float8: the self-attention's gate pass also writes its sum as the cross-attention's float8 input
        # (its q_linear, or the folded GEMMs on the GPU path; nothing when PAB broadcasts the
        # self-attention: the cross-attention then reads the sum in bf16; unused when PAB broadcasts the
        # cross-attention; not made for the CPU's folded torch ops)
        reads_rows = self.float8 and self.cross_attn.reads_float8_rows(x, y.shape[1])
        sum_rows: list[Float8Rows] | None = [] if reads_rows else None
        x = run_residual(
            pab,
            self.kind,
            block,
            x,
            lambda keep: self.self_attention(
                x_attn_in, shift_msa, scale_msa, gate_msa, frames, tokens, rope, parallel, keep_output=keep,
                sum_rows=sum_rows,
            ),
        )

        x_cross_in = x
        x_rows = sum_rows[0] if sum_rows else None
        cross = run_module(pab, "cross", block,
                           lambda: self.cross_attention(x_cross_in, y, key_mask, x_rows, folded), site=site)

        # the MLP's residual is x + cross: its norm kernel makes the sum; a broadcast MLP adds it here
        return run_residual(
            pab,
            "mlp",
            block,
            lambda: x_cross_in + cross,
            lambda keep: self.feed_forward(x_cross_in, cross, shift_mlp, scale_mlp, gate_mlp, keep_output=keep),
            site=site,
        )


class PatchEmbed3D(nn.Module):
    """Zero-pad ``[B, C, T, H, W]`` at the end of W, H, T to patch multiples; ``proj`` Conv3d (stride =
    kernel = patch); flatten to a contiguous ``[B, T'*H'*W', C]``.

    Contiguous on purpose: the token sequence is the residual stream of every block, and an elementwise op
    keeps the memory layout of its first operand, so a transposed view here would make every residual add
    a strided kernel and every norm copy its input first (on an H200 ~110 ms of a 500 ms Open-Sora call)."""

    def __init__(self, patch_size: Sequence[int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        pad = ((-w) % pw, (-h) % ph, (-t) % pt)
        if any(pad):
            x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class FinalLayer(nn.Module):
    """LN (no affine) modulated by ``t`` (``scale_shift_table`` [2, C]: shift, scale), then ``linear``."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# -- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedCaption:
    """A caption made ready for every denoiser call of a request (:meth:`STDiT3.prepare_caption`): the
    embedded text ``[B, L', C]`` in the model dtype, its boolean key mask (``None``: every token valid) and
    the cross-attentions' folded contexts, made on the first call and reused by the later ones. Valid for the
    model that made it, while its weights do not change (a changed module's context is remade)."""

    text: torch.Tensor
    key_mask: torch.Tensor | None
    folded: FoldedContextCache = dataclasses.field(default_factory=FoldedContextCache)

    @property
    def batch(self) -> int:
        return self.text.shape[0]



class STDiT3(nn.Module):
    """Open-Sora 1.2 STDiT3 denoiser.

    ``forward(x [B, in, T, H, W], timestep [B], y [B, L, caption_channels], mask [B, L])`` returns the
    prediction ``[B, out_channels, T, H, W]`` in float32 (as the official model: it casts its output to
    float32). With ``pred_sigma`` the first ``in_channels`` channels are the velocity, the rest the unused
    learned sigma.

    Args:
        config: the model config.
        round_timestep: round the timestep through bf16 before embedding it (default; reproduces the
            official bf16 conditioning, e.g. 977.3 -> 976, also in an fp32 model). Not a config.json field.
    """

    config_class: ClassVar[type] = STDiT3Config
    #: checkpoint keys the model knowingly does not use (none).
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = ()
    #: spatial and temporal MLPs of one depth index are two PAB sites.
    pab_mlp_sites: ClassVar[int] = 2

    def __init__(self, config: STDiT3Config, *, round_timestep: bool = True) -> None:
        super().__init__()
        self.config = config
        self.round_timestep = round_timestep
        c = config.hidden_size
        self.hidden_size = c
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = tuple(config.patch_size)

        self.rope = RotaryEmbedding(config.head_dim)
        self.x_embedder = PatchEmbed3D(self.patch_size, config.in_channels, c)
        self.t_embedder = SinusoidEmbedder(c)
        self.fps_embedder = SinusoidEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.y_embedder = CaptionEmbedder(config.caption_channels, c, config.model_max_length)
        self.spatial_blocks = nn.ModuleList([self._make_block(config, temporal=False) for _ in range(config.depth)])
        self.temporal_blocks = nn.ModuleList([self._make_block(config, temporal=True) for _ in range(config.depth)])
        self.final_layer = FinalLayer(c, math.prod(self.patch_size), self.out_channels)

    @staticmethod
    def _make_block(config: STDiT3Config, temporal: bool) -> STDiT3Block:
        return STDiT3Block(config.hidden_size, config.num_heads, config.mlp_hidden, config.qk_norm, temporal)

    # -- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, data: Mapping[str, Any], *, round_timestep: bool = True) -> STDiT3:
        """Build (randomly initialised) from a ``config.json`` dict."""
        return cls(cls.config_class.from_json_dict(data), round_timestep=round_timestep)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        round_timestep: bool = True,
    ) -> STDiT3:
        """Load an official-layout folder (``config.json`` + ``model.safetensors``), cast to ``dtype``
        (default: torch's default dtype) on ``device`` (default CPU); strict key and shape check."""
        return load_pretrained(
            lambda data: cls.from_config_dict(data, round_timestep=round_timestep),
            folder,
            dtype=dtype,
            device=device,
            weights_name=WEIGHTS_NAME,
        )

    # -- accessors --------------------------------------------------------------------------------------------
    @property
    def null_caption(self) -> torch.Tensor:
        """The learned unconditional caption ``[model_max_length, caption_channels]`` (``y_embedder.y_embedding``).

        For classifier-free guidance, cut it to the prompt's text length and give it the prompt's mask.
        """
        return self.y_embedder.y_embedding

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def pab_blocks(self) -> dict[str, int]:
        """Modules per PAB kind in one forward, for ``PABPlan.expected_counts(..., mlp_sites=2)``: every
        block has a cross-attention (``2 * depth``); the MLPs are ``depth`` per site, 2 sites."""
        d = self.config.depth
        return {"spatial": d, "temporal": d, "cross": 2 * d, "mlp": d}

    # -- input handling -----------------------------------------------------------------------------------------
    @staticmethod
    def _per_sample(
        value: TensorOrNumber | None, batch: int, name: str, default: float, device: torch.device
    ) -> torch.Tensor:
        """A float32 ``[B]`` tensor from ``None`` (default), a number, a scalar or a ``[B]`` tensor."""
        if value is None:
            value = default
        t = torch.as_tensor(value, device=device)
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
        t = t.to(torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        t = t.reshape(-1)
        if t.shape[0] == 1 and batch != 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(
                f"{name} must be a number or have one value per sample [{batch}], got shape {list(t.shape)}"
            )
        return t

    @staticmethod
    def _pixel_size(value: TensorOrNumber | None, default: int, name: str) -> float:
        if value is None:
            return float(default)
        if isinstance(value, torch.Tensor):
            if value.numel() == 0:
                raise ValueError(f"{name} tensor is empty")
            value = value.reshape(-1)[0].item()  # one size per batch, as the reference reads it
        try:
            px = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            px = float("nan")
        if isinstance(value, bool) or not px > 0 or math.isinf(px):
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
        return px

    def _text(
        self, y: torch.Tensor, mask: torch.Tensor | None, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedded text ``[B, L', C]`` and its boolean key mask (``None`` when all ``L'`` tokens are valid).

        Columns after the last valid token of the whole batch are dropped first; when the valid tokens of
        every sample are then the full prefix, no mask is needed (fast attention kernels apply).
        """
        if y.ndim == 4 and y.shape[1] == 1:
            y = y[:, 0]  # the reference's [B, 1, L, C] layout
        if y.ndim != 3 or y.shape[0] != batch or y.shape[2] != self.config.caption_channels:
            raise ValueError(
                f"y must be [batch={batch}, text_len, caption_channels={self.config.caption_channels}], "
                f"got {list(y.shape)}"
            )
        length = y.shape[1]
        if length == 0:
            raise ValueError("y has no text tokens")
        key_mask: torch.Tensor | None = None
        if mask is not None:
            if mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
                mask = mask[:, 0, 0]
            if tuple(mask.shape) != (batch, length):
                raise ValueError(f"mask must be [batch, text_len] = {[batch, length]}, got {list(mask.shape)}")
            if mask.dtype != torch.bool:
                if bool(((mask != 0) & (mask != 1)).any()):
                    raise ValueError("mask must be boolean or 0/1 (True/1 = valid token), not an additive bias")
                mask = mask != 0
            counts = mask.sum(dim=1)
            empty = (counts == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"mask: sample(s) {empty} have no valid text token (at least one is needed)")
            valid_cols = mask.any(dim=0).nonzero().flatten()
            used = int(valid_cols[-1].item()) + 1
            if used < length:
                y, mask = y[:, :used], mask[:, :used]
            key_mask = None if bool(mask.all()) else mask.to(y.device)
        return self.y_embedder(y.to(dtype)), key_mask

    def prepare_caption(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> PreparedCaption:
        """The T5 features ``y`` ``[B, L, caption_channels]`` (and ``mask``, as :meth:`forward` takes them)
        embedded once, for a request's denoiser calls: pass the result as ``forward``'s ``y`` (and no
        ``mask``). The caption's embedding, its key / value projections and its folded cross-attention
        contexts then run on the first call only."""
        batch = y.shape[0] if y.ndim else 0
        return PreparedCaption(*self._text(y, mask, batch, self.dtype))

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timestep: TensorOrNumber,
        y: torch.Tensor | PreparedCaption,
        mask: torch.Tensor | None = None,
        fps: TensorOrNumber | None = None,
        height: TensorOrNumber | None = None,
        width: TensorOrNumber | None = None,
        *,
        pab: PABRun | None = None,
        parallel: ParallelState | None = None,
    ) -> torch.Tensor:
        """Predict ``[B, out_channels, T, H, W]`` (float32) from latents ``x`` ``[B, in_channels, T, H, W]``.

        Args:
            x: noisy latents (any T/H/W; padded to patch multiples internally, the output is cropped back).
            timestep: ``[B]`` float timesteps in [0, 1000] (or one number for the batch).
            y: T5 features ``[B, L, caption_channels]`` (the unconditional branch: :attr:`null_caption` cut to
                ``L`` tokens), or the same made ready by :meth:`prepare_caption` (then no ``mask``).
            mask: ``[B, L]`` bool or 0/1, ``True`` = valid token; ``None`` = all valid. Samples may differ.
            fps: frame rate per sample ``[B]`` or one number (default 24).
            height, width: the video's *pixel* size (numbers, or tensors whose first entry is used);
                default 8x the latent size. They set the scale of the position table.
            pab: the request's PAB run (``begin_call()`` already called for this call) or ``None``.
            parallel: this rank's parallel state; with an SP degree > 1 every rank of the SP group calls
                this with the same arguments, works on its share of the spatial tokens and returns the
                full prediction (see the module docstring). ``None``: one process.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [batch, {self.in_channels}, frames, height, width], got {list(x.shape)}")
        dtype = self.dtype
        device = x.device
        b, _, t_in, h_in, w_in = x.shape
        pt, ph, pw = self.patch_size
        frames, gh, gw = -(-t_in // pt), -(-h_in // ph), -(-w_in // pw)
        tokens = gh * gw
        x = x.to(dtype)

        # conditioning
        ts = self._per_sample(timestep, b, "timestep", 0.0, device)
        if self.round_timestep:
            ts = ts.to(torch.bfloat16).float()
        fps_t = self._per_sample(fps, b, "fps", DEFAULT_FPS, device)
        t = self.t_embedder(ts, dtype) + self.fps_embedder(fps_t, dtype)  # [B, C]
        t_mlp = self.t_block(t)  # [B, 6C]
        folded: FoldedContextCache | None = None
        if isinstance(y, PreparedCaption):
            if mask is not None:
                raise ValueError("mask must be None with a PreparedCaption (its mask was applied when it was made)")
            if y.batch != b or y.text.dtype != dtype or y.text.device != device:
                raise ValueError(f"the PreparedCaption holds {y.batch} caption(s) in {y.text.dtype} on "
                                 f"{y.text.device}; this call has {b} sample(s) in {dtype} on {device}")
            text, key_mask, folded = y.text, y.key_mask, y.folded
        else:
            text, key_mask = self._text(y, mask, b, dtype)

        # patches + 2D positions (one table shared by every frame)
        height_px = self._pixel_size(height, LATENT_TO_PIXEL * h_in, "height")
        width_px = self._pixel_size(width, LATENT_TO_PIXEL * w_in, "width")
        scale = math.sqrt(height_px * width_px) / self.config.input_sq_size
        pos = spatial_pos_table(self.hidden_size, gh, gw, scale, device=device).to(dtype)
        sp = _sp_state(parallel)
        h = self.x_embedder(x).view(b, frames, tokens, -1) + pos  # [B, T, S, C]
        h = comm.shard(h, 2, sp).view(b, -1, self.hidden_size)  # this rank's tokens: [B, T*S', C]

        rope = self.rope.cos_sin(frames, device) if frames > 1 else None
        for d, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            h = spatial(h, text, key_mask, t_mlp, frames, tokens, pab=pab, block=d, parallel=sp, folded=folded)
            h = temporal(h, text, key_mask, t_mlp, frames, tokens, rope, pab=pab, block=d, parallel=sp,
                         folded=folded)

        h = self.final_layer(h, t)  # [B, T*S', pt*ph*pw*out], per token: gathered after it (fewer channels)
        h = comm.gather(h.view(b, frames, -1, h.shape[-1]), sp, dim=2, full_size=tokens)  # [B, T, S, ...]
        return self._unpatchify(h, frames, gh, gw, (t_in, h_in, w_in)).float()

    def _unpatchify(
        self, h: torch.Tensor, frames: int, gh: int, gw: int, size: tuple[int, int, int]
    ) -> torch.Tensor:
        """``[B, T'*H'*W', pt*ph*pw*c]`` or ``[B, T', H'*W', pt*ph*pw*c]`` (channel index
        ``((tp*ph + hp)*pw + wp)*c + ci``) -> ``[B, c, T, H, W]`` cropped to ``size``."""
        b = h.shape[0]
        pt, ph, pw = self.patch_size
        c = self.out_channels
        h = h.reshape(b, frames, gh, gw, pt, ph, pw, c)
        h = h.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, frames * pt, gh * ph, gw * pw)
        t_in, h_in, w_in = size
        return h[:, :, :t_in, :h_in, :w_in]
