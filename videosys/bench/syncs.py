"""Host syncs of a request, by the line of VideoSys code that made them.

A host sync (``.item()``, a blocking copy, ``nonzero``...) makes the host wait for every kernel it has queued;
inside a sampling loop it drains the queue on every step, and the GPU then idles while the host launches
the next step's first kernels. torch's sync debug mode warns at each synchronizing CUDA call; this module
counts those warnings by the innermost frames of the ``videosys`` package that led to them, and
:func:`per_step` separates the syncs that grow with the number of steps (the loop's) from the request's
fixed ones (``scripts/check_syncs.py``; docs/benchmarks.md, ninth session).
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["SYNC_WARNING", "count_syncs", "per_step", "recording_syncs"]

#: What torch's sync debug mode warns (the start of its message).
SYNC_WARNING = "called a synchronizing CUDA operation"
_PACKAGE = Path(__file__).resolve().parents[1]
_THIS_FILE = Path(__file__).resolve()


def _site(stack: list[traceback.FrameSummary], root: Path, depth: int) -> str:
    """The innermost ``depth`` frames under ``root`` (this module's own excluded), innermost first."""
    frames = [(path, f.lineno) for f in stack
              if (path := Path(f.filename).resolve()).is_relative_to(root) and path != _THIS_FILE]
    if not frames:
        return "(outside the package)"
    return " <- ".join(f"{path.relative_to(root)}:{line}" for path, line in reversed(frames[-depth:]))


@contextmanager
def recording_syncs(root: Path = _PACKAGE, depth: int = 3) -> Iterator[Counter[str]]:
    """A counter of the sync warnings raised inside the block, by site (:func:`_site`); other warnings go
    on to the previous handler. Does not switch the debug mode on (:func:`count_syncs` does)."""
    sites: Counter[str] = Counter()
    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        previous = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
            if SYNC_WARNING in str(message):
                sites[_site(traceback.extract_stack()[:-1], root, depth)] += 1
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.simplefilter("always")
        warnings.showwarning = record
        yield sites


def count_syncs(run: Callable[[], object], depth: int = 3) -> Counter[str]:
    """Host syncs ``run()`` makes on the GPU, by site (CUDA only: the debug mode is CUDA's)."""
    if not torch.cuda.is_available():
        raise RuntimeError("counting host syncs needs a CUDA GPU (torch's sync debug mode is CUDA's)")
    previous = torch.cuda.get_sync_debug_mode()
    with recording_syncs(depth=depth) as sites:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sites


def per_step(short: Counter[str], long: Counter[str], short_steps: int, long_steps: int) -> dict[str, float]:
    """Syncs per sampling step, by site: how much each site's count grew from a request of ``short_steps``
    to one of ``long_steps``, per added step (sites that did not grow are the request's fixed syncs)."""
    if long_steps <= short_steps:
        raise ValueError(f"the long request needs more steps than the short one ({long_steps} <= {short_steps})")
    grown = {site: (long[site] - short[site]) / (long_steps - short_steps) for site in long.keys() | short.keys()}
    return {site: n for site, n in sorted(grown.items()) if n > 0}
