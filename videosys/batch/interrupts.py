"""Ctrl-C that cannot be lost while a batch runs.

Python turns SIGINT into ``KeyboardInterrupt`` in whatever Python code the main thread runs next, and that
can be a finaliser (``__del__``, a generator closed by the garbage collector, a weakref callback), where the
exception is printed as "Exception ignored" and dropped: the batch would then go on and end as if no one
had asked it to stop. :func:`remembered_interrupts` also records that the signal came, so the batch loop
can stop at the next item boundary however the exception itself fared.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["remembered_interrupts"]


@contextmanager
def remembered_interrupts() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` as before and is also remembered; yields a
    function that says whether one came. The previous handler is restored on exit. Outside the main thread,
    or where SIGINT is ignored, nothing is installed (and the function always says no)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is None:  # ignored, or installed from outside Python: leave it
        yield lambda: False
        return
    came: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        came.append(True)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGINT, previous)
