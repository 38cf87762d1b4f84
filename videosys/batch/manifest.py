"""The batch manifest: a JSON-lines file, appended to (and fsynced) as soon as each item's output is saved.

Each line is one record. ``{"type": "run", ...}`` starts a run; ``{"type": "item", "key": ..., "status":
"done" | "failed", ...}`` records one item's request, seed, output path, size and frame count, timings, PAB
stats and error. The latest item record of a key wins. A line cut short by a crash is ignored when read, and
the next append starts on a fresh line. While a run writes, it holds an advisory lock on ``<manifest>.lock``
(released by the OS when the process dies), so two runs cannot write one manifest.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ..errors import VideoSysError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class ManifestBusyError(VideoSysError, RuntimeError):
    """Another process is running a batch into the same manifest."""


class Manifest:
    """Read the records of ``path``; as a context manager, hold its lock and append records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._lock: IO[str] | None = None

    def records(self) -> list[dict[str, Any]]:
        """Every readable record in order (bad or truncated lines are skipped with a warning)."""
        if not self.path.is_file():
            return []
        out: list[dict[str, Any]] = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: unreadable manifest line skipped (an interrupted write?)", self.path, n)
                    continue
                if isinstance(record, dict):
                    out.append(record)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last item record of each key."""
        return {r["key"]: r for r in self.records() if r.get("type") == "item" and isinstance(r.get("key"), str)}

    # -- writing -----------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
            if needs_newline:  # the last line was cut short by a crash: leave it alone, start a new one
                self._file.write("\n")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            self._release()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable (flush + fsync) before returning."""
        if self._file is None:
            raise RuntimeError("Manifest.append outside its `with` block")
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _acquire(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open as the lock until _release
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise ManifestBusyError(
                f"manifest: {str(self.path)!r} is in use by another batch run (lock {str(lock_path)!r}); "
                "wait for it to finish or use another output.dir") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
