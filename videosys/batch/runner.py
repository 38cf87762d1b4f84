"""Running a batch: check everything first, skip finished items, generate the rest in chunks of the engine's
concurrency, save each output atomically and record it in the manifest at once, and sum up."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BatchConfigError
from .interrupts import remembered_interrupts
from .loading import LoadedConfig, load_config
from .manifest import MANIFEST_VERSION, Manifest
from .outputs import incomplete_reason, measure
from .plan import BatchItem, plan_items, resolve_input_path
from .prompts import read_prompts
from .schema import BatchConfig

if TYPE_CHECKING:
    from ..engine import VideoSysEngine
    from ..result import GenerationResult

logger = logging.getLogger(__name__)

ConfigSource = str | Path | BatchConfig | Mapping[str, Any]

_ENGINE_FIELDS = tuple(f"{section}.{key}:" for section, keys in (
    ("model", ("name", "weights", "device", "dtype", "compile", "offload_text_encoder", "fused_kernels", "float8",
               "cuda_graphs")),
    ("parallel", ("world_size", "sp", "cfg_parallel", "ray_address"))) for key in keys) + ("model:", "parallel:")


@dataclass
class PreparedBatch:
    """A batch that passed every check: its config, engine (not loaded yet), items and where they go."""

    config: BatchConfig
    engine: VideoSysEngine
    items: list[BatchItem]
    output_dir: Path
    manifest_path: Path
    source: str | None = None

    @property
    def format(self) -> str:
        return self.config.output.format


@dataclass
class BatchSummary:
    """What a run did. ``done`` items were generated now, ``skipped`` were already complete, ``failed`` raised
    (their errors in ``failures``), ``not_run`` were left by ``fail_fast`` or an interruption."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    not_run: int = 0
    seconds: list[float] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    output_dir: str = ""
    manifest: str = ""
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def mean_seconds(self) -> float | None:
        """Mean seconds per video generated in this run (generation and saving), or ``None``."""
        return sum(self.seconds) / len(self.seconds) if self.seconds else None

    @property
    def exit_code(self) -> int:
        """0 when every item is done or skipped, 1 when any failed or was not run."""
        return 0 if self.failed == 0 and self.not_run == 0 else 1

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "not_run": self.not_run, "mean_seconds_per_video": self.mean_seconds, "wall_s": self.wall_s,
                "interrupted": self.interrupted, "output_dir": self.output_dir, "manifest": self.manifest,
                "failures": [{"item": k, "error": e} for k, e in self.failures]}

    def table(self) -> str:
        """The closing summary, a small fixed-width table and the failed items."""
        mean = "-" if self.mean_seconds is None else f"{self.mean_seconds:.2f}"
        heads = ("items", "done", "skipped", "failed", "not run", "s/video", "wall s")
        cells = (self.total, self.done, self.skipped, self.failed, self.not_run, mean, f"{self.wall_s:.1f}")
        widths = [max(len(h), len(str(c))) for h, c in zip(heads, cells)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths)),
                 "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))]
        if self.interrupted:
            lines.append("interrupted: rerun the same command to resume")
        lines.append(f"output    {self.output_dir}")
        lines.append(f"manifest  {self.manifest}")
        for key, error in self.failures:
            lines.append(f"failed    {key}: {error}")
        return "\n".join(lines)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a batch; ``summary`` says what was finished (and recorded) before it."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__("batch interrupted")
        self.summary = summary


def _engine_error(exc: Exception) -> str:
    """An engine construction error under the config section it comes from."""
    from ..parallel import ParallelConfigError

    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    head, sep, rest = msg.partition(": ")
    where = {"model": "model.name", "weights": "model.weights", "device": "model.device", "dtype": "model.dtype",
             "world_size": "parallel.world_size", "sp": "parallel.sp", "cfg_parallel": "parallel.cfg_parallel"}
    if sep and head in where:
        return f"{where[head]}: {rest}"
    return f"{'parallel' if isinstance(exc, ParallelConfigError) else 'model'}: {msg}"


def _load(config: ConfigSource, overrides: Sequence[str], base_dir: Path | None) -> LoadedConfig:
    if isinstance(config, BatchConfig):
        loaded = load_config(None, overrides, data=dataclasses.asdict(config))
    elif isinstance(config, Mapping):
        loaded = load_config(None, overrides, data=config)
    else:
        loaded = load_config(config, overrides)
    if base_dir is not None:
        loaded.base_dir = Path(base_dir)
    return loaded


def prepare_batch(config: ConfigSource, overrides: Sequence[str] = (), *, world_size: int | None = None,
                  sp: int | None = None, cfg_parallel: bool | None = None, ray_address: str | None = None,
                  base_dir: str | Path | None = None) -> PreparedBatch:
    """Load and check a batch config (a YAML path, a mapping or a :class:`BatchConfig`) with dotted
    ``overrides``, build the engine and every request. The parallel arguments, when given, replace the
    config's ``parallel`` section. Raises :class:`BatchConfigError` listing every problem; writes nothing.
    ``base_dir`` (default: the config file's folder, or the working directory) anchors relative input paths."""
    from ..engine import VideoSysEngine
    from ..errors import VideoSysError
    from ..parallel import ParallelConfigError

    loaded = _load(config, overrides, None if base_dir is None else Path(base_dir))
    cfg, errors = loaded.config, list(loaded.errors)
    par = cfg.parallel
    par.world_size = par.world_size if world_size is None else world_size
    par.sp = par.sp if sp is None else sp
    par.cfg_parallel = par.cfg_parallel if cfg_parallel is None else cfg_parallel
    par.ray_address = par.ray_address if ray_address is None else ray_address
    specs, prompt_errors = read_prompts(cfg, loaded.base_dir)
    errors.extend(prompt_errors)
    # a dropped model/parallel value would silently fall back to its default: do not build the engine then
    model_ok = not any(e.startswith(_ENGINE_FIELDS) for e in errors)
    engine = None
    if model_ok:
        m = cfg.model
        try:
            engine = VideoSysEngine(
                m.name, weights=resolve_input_path(m.weights, loaded.base_dir), device=m.device, dtype=m.dtype,
                progress=False, world_size=par.world_size, sp=par.sp, cfg_parallel=par.cfg_parallel,
                ray_address=par.ray_address, compile=m.compile, offload_text_encoder=m.offload_text_encoder,
                fused_kernels=m.fused_kernels, float8=m.float8, cuda_graphs=m.cuda_graphs)
        except (VideoSysError, ParallelConfigError, ValueError) as exc:
            errors.append(_engine_error(exc))
    items: list[BatchItem] = []
    if engine is not None:
        plan = plan_items(cfg, specs, engine, loaded.base_dir)
        errors.extend(plan.errors)
        items = plan.items
    if errors or engine is None:
        if engine is not None:
            engine.shutdown()
        raise BatchConfigError(errors, loaded.source)
    out_dir = Path(cfg.output.dir).expanduser()
    manifest = Path(cfg.output.manifest).expanduser() if cfg.output.manifest else out_dir / "manifest.jsonl"
    return PreparedBatch(config=cfg, engine=engine, items=items, output_dir=out_dir, manifest_path=manifest,
                         source=loaded.source)


def pending_items(batch: PreparedBatch, manifest: Manifest) -> tuple[list[BatchItem], int]:
    """(items to generate, number skipped): an item is skipped when its latest record is ``done`` for the same
    request and its output is still complete (size and frame count as recorded)."""
    latest = manifest.latest()
    todo: list[BatchItem] = []
    skipped = 0
    for item in batch.items:
        record = latest.get(item.key)
        if record is not None and record.get("status") == "done":
            if record.get("request_hash") != item.request_hash:
                logger.info("%s: the request changed since it was made; generating again", item.key)
            else:
                reason = incomplete_reason(item.path, batch.format, record.get("bytes"), record.get("frames"))
                if reason is None:
                    skipped += 1
                    continue
                logger.info("%s: output %s; generating again", item.key, reason)
        todo.append(item)
    return todo, skipped


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _remove_partials(path: Path) -> None:
    """Temporary siblings an interrupted write of ``path`` left behind (videosys.io.video's naming)."""
    pattern = f".{path.name}.*.part" if not path.suffix else f".{path.stem}.*.part{path.suffix}"
    for stale in path.parent.glob(pattern):
        logger.info("removing %s left by an interrupted write", stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _item_record(item: BatchItem, batch: PreparedBatch) -> dict[str, Any]:
    return {"type": "item", "key": item.key, "index": item.index, "prompt_index": item.prompt_index,
            "variant": item.variant, "origin": item.origin, "prompt": item.request.prompt, "seed": item.request.seed,
            "request": item.request.to_dict(), "request_hash": item.request_hash, "model": batch.engine.model,
            "output": _recorded_path(item.path, batch.manifest_path), "format": batch.format}


def _recorded_path(path: Path, manifest: Path) -> str:
    """The output as the manifest records it: relative to the manifest's folder (the batch folder can move),
    or absolute when it lies elsewhere."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(manifest.resolve().parent).as_posix()
    except ValueError:
        return str(resolved)


def _finish(item: BatchItem, outcome: GenerationResult | Exception, batch: PreparedBatch,
            share_s: float) -> tuple[dict[str, Any], float | None]:
    """Save one item's result and build its manifest record; (record, seconds) with seconds ``None`` on failure."""
    record = _item_record(item, batch)
    if isinstance(outcome, BaseException):
        return {**record, "status": "failed", "error": f"{type(outcome).__name__}: {outcome}",
                "finished_at": _now()}, None
    t0 = time.perf_counter()
    try:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_partials(item.path)
        outcome.save(item.path)
        size, frames = measure(item.path, batch.format)
    except Exception as exc:  # noqa: BLE001 - a save failure is this item's failure, the batch goes on
        return {**record, "status": "failed", "error": f"saving {item.path}: {type(exc).__name__}: {exc}",
                "timings": dict(outcome.timings), "finished_at": _now()}, None
    save_s = time.perf_counter() - t0
    seconds = share_s + save_s
    timings = {**outcome.timings, "save": round(save_s, 4), "item_wall": round(seconds, 4)}
    return {**record, "status": "done", "bytes": size, "frames": frames, "timings": timings,
            "pab_stats": outcome.pab_stats, "pab_peak_kept_bytes": outcome.pab_peak_kept_bytes,
            "comm_stats": outcome.comm_stats, "error": None,
            "finished_at": _now()}, seconds


def execute_batch(batch: PreparedBatch, *, fail_fast: bool | None = None, progress: bool = True) -> BatchSummary:
    """Run a prepared batch (see the module docstring). Raises :class:`BatchInterrupted` on Ctrl-C after
    recording what finished; the engine is left running (the caller owns it)."""
    from tqdm.auto import tqdm

    fail_fast = batch.config.fail_fast if fail_fast is None else fail_fast
    summary = BatchSummary(total=len(batch.items), output_dir=str(batch.output_dir), manifest=str(batch.manifest_path))
    start = time.perf_counter()
    with Manifest(batch.manifest_path) as manifest:
        todo, summary.skipped = pending_items(batch, manifest)
        summary.not_run = len(todo)
        if summary.skipped:
            logger.info("%d of %d items already done; skipping them", summary.skipped, summary.total)
        manifest.append({"type": "run", "version": MANIFEST_VERSION, "started_at": _now(), "config": batch.source,
                         "model": batch.engine.model, "weights": str(batch.engine.checkpoint),
                         "items": summary.total, "to_generate": len(todo), "skipped": summary.skipped})
        step = max(1, int(batch.engine.concurrency))
        bar = tqdm(total=len(todo), desc="batch", unit="video", disable=not progress or not todo, dynamic_ncols=True)
        try:
            with remembered_interrupts() as interrupted:
                for lo in range(0, len(todo), step):
                    chunk = todo[lo:lo + step]
                    t0 = time.perf_counter()
                    try:
                        outcomes = batch.engine.generate_requests([i.request for i in chunk], return_exceptions=True)
                    except Exception as exc:  # noqa: BLE001 - the whole chunk failed (e.g. the pool died)
                        logger.warning("generation of %d item(s) failed: %s", len(chunk), exc)
                        outcomes = [exc] * len(chunk)
                    share = (time.perf_counter() - t0) / len(chunk)
                    stop = False
                    for item, outcome in zip(chunk, outcomes):
                        record, seconds = _finish(item, outcome, batch, share)
                        manifest.append(record)
                        summary.not_run -= 1
                        if seconds is None:
                            summary.failed += 1
                            summary.failures.append((item.key, record["error"]))
                            logger.warning("%s (%s) failed: %s", item.key, item.origin, record["error"])
                            stop = stop or fail_fast
                        else:
                            summary.done += 1
                            summary.seconds.append(seconds)
                        bar.update(1)
                        bar.set_postfix(failed=summary.failed, refresh=False)
                    if interrupted():  # a Ctrl-C whose KeyboardInterrupt a finaliser swallowed
                        raise KeyboardInterrupt
                    if stop:
                        logger.warning("stopping after the first failure (fail_fast); %d item(s) not run",
                                       summary.not_run)
                        break
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.wall_s = time.perf_counter() - start
            raise BatchInterrupted(summary) from None
        finally:
            bar.close()
    summary.wall_s = time.perf_counter() - start
    return summary


def run_batch(config: ConfigSource, overrides: Sequence[str] = (), *, world_size: int | None = None,
              sp: int | None = None, cfg_parallel: bool | None = None, ray_address: str | None = None,
              fail_fast: bool | None = None, progress: bool = True) -> BatchSummary:
    """Check a batch config, then generate every item not already done, resuming from the manifest.

    ``config`` is a YAML path, a mapping or a :class:`BatchConfig`; ``overrides`` are dotted ``key=value``
    strings; the parallel arguments (``videosys launch``) replace the config's ``parallel`` section;
    ``fail_fast`` (default: the config's) stops at the first failed item. Raises :class:`BatchConfigError`
    before any work if anything is wrong, :class:`BatchInterrupted` on Ctrl-C. The worker pool, if any, is
    stopped before returning."""
    batch = prepare_batch(config, overrides, world_size=world_size, sp=sp, cfg_parallel=cfg_parallel,
                          ray_address=ray_address)
    try:
        return execute_batch(batch, fail_fast=fail_fast, progress=progress)
    finally:
        batch.engine.shutdown()
