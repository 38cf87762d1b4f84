"""PAB configuration: pure data, validated on construction, loadable from dicts and YAML.

A :class:`PABConfig` says, per attention kind (spatial, temporal, cross), inside which timestep window
its output may be broadcast and for how many calls, and which blocks' MLP outputs are reused around
which timesteps. It holds no tensors and no state: the per-request state lives in
:class:`videosys.pab.run.PABRun`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

ATTENTION_KINDS: tuple[str, ...] = ("spatial", "temporal", "cross")
ALL_KINDS: tuple[str, ...] = ATTENTION_KINDS + ("mlp",)
#: How kept outputs wait for their broadcasts (:mod:`videosys.pab.kept`).
CACHE_FORMATS: tuple[str, ...] = ("native", "int8")


class PABConfigError(ValueError):
    """A PAB config field is malformed; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class AttentionBroadcast:
    """Broadcast rule of one attention kind.

    Inside the open window ``lo < t < hi`` the kind is computed on calls whose index is a multiple of
    ``range`` and broadcast (reused) on the ``range - 1`` calls in between. ``range == 1`` never broadcasts.
    """

    window: tuple[float, float]
    range: int

    def __post_init__(self) -> None:
        lo, hi = self.window
        if not lo < hi:
            raise PABConfigError(f"window: {list(self.window)} is empty (allowed: [lo, hi] with lo < hi)")
        if self.range < 1:
            raise PABConfigError(f"range: {self.range} not allowed (allowed: an integer >= 1)")

    def broadcasts(self, call_index: int, timestep: float) -> bool:
        lo, hi = self.window
        return lo < timestep < hi and call_index % self.range != 0


@dataclass(frozen=True)
class MLPBroadcast:
    """MLP broadcast: at a call whose timestep is one of ``timesteps`` the listed blocks compute their MLP
    and keep the output; the next ``skip_count`` calls reuse it.

    ``match`` says how a configured timestep finds its call. ``"exact"`` is the reference rule
    (``int(t) == key``), which silently never fires when the step count or sampler changes the timestep
    values; ``"nearest"`` keys each configured timestep to the call whose timestep is closest to it, so
    the MLP broadcast survives a different schedule.
    """

    timesteps: tuple[float, ...]
    blocks: tuple[int, ...]
    skip_count: int = 2
    match: str = "exact"

    def __post_init__(self) -> None:
        if not self.timesteps:
            raise PABConfigError("mlp.timesteps: empty (allowed: a non-empty list of timesteps)")
        if not self.blocks or any(b < 0 for b in self.blocks):
            raise PABConfigError(f"mlp.blocks: {list(self.blocks)} not allowed (allowed: non-empty list of block indices >= 0)")
        if self.skip_count < 1:
            raise PABConfigError(f"mlp.skip_count: {self.skip_count} not allowed (allowed: an integer >= 1)")
        if self.match not in ("exact", "nearest"):
            raise PABConfigError(f"mlp.match: {self.match!r} not allowed (allowed: 'exact', 'nearest')")


@dataclass(frozen=True)
class PABConfig:
    """The whole PAB setting of one request. A kind set to ``None`` is never broadcast. ``cache`` is the
    format kept outputs wait in between a compute and its broadcasts (:mod:`videosys.pab.kept`:
    ``"native"``, the reference, or ``"int8"``, about half the memory)."""

    name: str = "custom"
    spatial: AttentionBroadcast | None = None
    temporal: AttentionBroadcast | None = None
    cross: AttentionBroadcast | None = None
    mlp: MLPBroadcast | None = None
    cache: str = "native"

    def __post_init__(self) -> None:
        check_cache_format(self.cache)

    @property
    def label(self) -> str:
        """The name, with the cache format when it is not the native one (``pab246+int8``)."""
        return self.name if self.cache == "native" else f"{self.name}+{self.cache}"

    @property
    def enabled(self) -> bool:
        return any(getattr(self, kind) is not None for kind in ALL_KINDS)

    def attention(self, kind: str) -> AttentionBroadcast | None:
        if kind not in ATTENTION_KINDS:
            raise PABConfigError(f"kind: {kind!r} not allowed (allowed: {', '.join(ATTENTION_KINDS)})")
        return getattr(self, kind)

    @classmethod
    def disabled(cls) -> "PABConfig":
        return cls(name="none")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> "PABConfig":
        """Build from the YAML shape documented in docs/pab.md.

        Either per kind ``{window: [lo, hi], range: r}``, or a shared ``window`` with per-kind ranges
        (``spatial_range``...), an optional ``mlp: {timesteps, blocks, skip_count, match}`` and an optional
        ``cache`` format. A kind given as ``null``/``false`` or with no range is off.
        """
        if not isinstance(data, Mapping):
            raise PABConfigError(f"pab: expected a mapping, got {type(data).__name__}")
        allowed = {"name", "window", "mlp", "cache", *ATTENTION_KINDS, *(f"{k}_range" for k in ATTENTION_KINDS)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PABConfigError(f"pab: unknown key(s) {unknown} (allowed: {sorted(allowed)})")
        shared_window = data.get("window")
        kinds: dict[str, AttentionBroadcast | None] = {}
        for kind in ATTENTION_KINDS:
            spec = data.get(kind)
            if kind in data and spec in (None, False):
                kinds[kind] = None
                continue
            spec = dict(spec) if isinstance(spec, Mapping) else {}
            if f"{kind}_range" in data:
                spec.setdefault("range", data[f"{kind}_range"])
            if shared_window is not None:
                spec.setdefault("window", shared_window)
            if spec.get("range") is None:
                kinds[kind] = None
                continue
            kinds[kind] = _attention_from(spec, kind)
        mlp_spec = data.get("mlp")
        mlp = None if mlp_spec in (None, False) else _mlp_from(mlp_spec)
        return cls(name=str(data.get("name", name)), mlp=mlp, cache=check_cache_format(data.get("cache", "native")),
                   **kinds)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PABConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise PABConfigError(f"pab: file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise PABConfigError(f"pab: {path} is not valid YAML: {exc}") from None
        if isinstance(data, Mapping) and "pab" in data and len(data) == 1:
            data = data["pab"]
        return cls.from_dict(data or {}, name=path.stem)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for kind in ATTENTION_KINDS:
            spec = getattr(self, kind)
            out[kind] = None if spec is None else {"window": list(spec.window), "range": spec.range}
        out["mlp"] = None if self.mlp is None else {**asdict(self.mlp), "timesteps": list(self.mlp.timesteps), "blocks": list(self.mlp.blocks)}
        if self.cache != "native":  # absent when native: request hashes (batch resume) stay as they were
            out["cache"] = self.cache
        return out


def with_cache_format(pab: Any, cache: str | None) -> Any:
    """``pab`` as a user gave it (preset name, YAML path, ...) with its kept outputs in ``cache`` format:
    the ``{"preset": ..., "cache": ...}`` mapping :func:`resolve_pab` reads; ``pab`` itself when ``cache``
    is ``None``."""
    return pab if cache is None else {"preset": pab, "cache": cache}


def check_cache_format(value: Any, field: str = "pab.cache") -> str:
    """``value`` when it names a cache format, else :class:`PABConfigError` naming ``field``."""
    if not isinstance(value, str) or value not in CACHE_FORMATS:
        raise PABConfigError(f"{field}: {value!r} not allowed (allowed: {', '.join(CACHE_FORMATS)})")
    return value


def _number_pair(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise PABConfigError(f"{where}: {value!r} not allowed (allowed: [lo, hi], two numbers)")
    return float(value[0]), float(value[1])


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PABConfigError(f"{where}: {value!r} not allowed (allowed: an integer)")
    return value


def _attention_from(spec: Mapping[str, Any], kind: str) -> AttentionBroadcast:
    unknown = sorted(set(spec) - {"window", "range"})
    if unknown:
        raise PABConfigError(f"pab.{kind}: unknown key(s) {unknown} (allowed: window, range)")
    if "window" not in spec:
        raise PABConfigError(f"pab.{kind}.window: missing (allowed: [lo, hi] timesteps)")
    try:
        return AttentionBroadcast(window=_number_pair(spec["window"], f"pab.{kind}.window"), range=_int(spec["range"], f"pab.{kind}.range"))
    except PABConfigError as exc:
        msg = str(exc)
        raise PABConfigError(msg if msg.startswith("pab.") else f"pab.{kind}.{msg}") from None


def _mlp_from(spec: Any) -> MLPBroadcast:
    if not isinstance(spec, Mapping):
        raise PABConfigError(f"pab.mlp: expected a mapping, got {spec!r}")
    unknown = sorted(set(spec) - {"timesteps", "blocks", "skip_count", "match"})
    if unknown:
        raise PABConfigError(f"pab.mlp: unknown key(s) {unknown} (allowed: timesteps, blocks, skip_count, match)")
    timesteps = spec.get("timesteps")
    blocks = spec.get("blocks")
    if not isinstance(timesteps, (list, tuple)) or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in timesteps):
        raise PABConfigError(f"pab.mlp.timesteps: {timesteps!r} not allowed (allowed: a list of timesteps)")
    if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise PABConfigError(f"pab.mlp.blocks: {blocks!r} not allowed (allowed: a list of block indices)")
    try:
        return MLPBroadcast(
            timesteps=tuple(float(t) for t in timesteps),
            blocks=tuple(blocks),
            skip_count=_int(spec.get("skip_count", 2), "pab.mlp.skip_count"),
            match=str(spec.get("match", "exact")),
        )
    except PABConfigError as exc:
        msg = str(exc)
        raise PABConfigError(msg if msg.startswith("pab.") else f"pab.{msg}") from None


@dataclass(frozen=True)
class PABPresets:
    """The named PAB presets of one model, with the one used when PAB is asked for without a name."""

    presets: Mapping[str, PABConfig] = field(default_factory=dict)
    default: str | None = None

    def get(self, name: str) -> PABConfig:
        if name in ("default", "pab") and self.default:
            name = self.default
        if name not in self.presets:
            allowed = ", ".join(["none", *sorted(self.presets)])
            raise PABConfigError(f"pab: {name!r} is not a preset of this model (allowed: {allowed}, or a YAML file)")
        return self.presets[name]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PABPresets":
        presets = {name: PABConfig.from_dict(spec, name=name) for name, spec in (data.get("presets") or {}).items()}
        default = data.get("default")
        if default is not None and default not in presets:
            raise PABConfigError(f"pab.default: {default!r} is not one of the presets {sorted(presets)}")
        return cls(presets=presets, default=default)


def resolve_pab(pab: Any, presets: PABPresets) -> PABConfig:
    """Turn what a user passed as ``pab`` into a config: ``None``/``"none"``/``False`` switch PAB off;
    a preset name, ``"default"``, a path to a YAML file, a mapping or a :class:`PABConfig`.

    A mapping with a ``preset`` key names a preset (or YAML file) and changes its ``cache`` format, e.g.
    ``{"preset": "pab246", "cache": "int8"}``; any other mapping is a whole config (:meth:`PABConfig.from_dict`).
    """
    if pab is None or pab is False or (isinstance(pab, str) and pab.lower() in ("none", "off", "")):
        return PABConfig.disabled()
    if pab is True:
        return presets.get("default")
    if isinstance(pab, PABConfig):
        return pab
    if isinstance(pab, Mapping) and "preset" in pab:
        unknown = sorted(set(pab) - {"preset", "cache"})
        if unknown:
            raise PABConfigError(f"pab: unknown key(s) {unknown} next to 'preset' (allowed: preset, cache)")
        base = resolve_pab(pab["preset"], presets)
        if not base.enabled:
            return base
        return replace(base, cache=check_cache_format(pab.get("cache", base.cache)))
    if isinstance(pab, Mapping):
        return PABConfig.from_dict(pab)
    if isinstance(pab, (str, Path)):
        text = str(pab)
        if text.endswith((".yaml", ".yml")) or Path(text).is_file():
            return PABConfig.from_yaml(text)
        return presets.get(text)
    raise PABConfigError(f"pab: {pab!r} not allowed (allowed: none, a preset name, a YAML path, a mapping or a PABConfig)")
