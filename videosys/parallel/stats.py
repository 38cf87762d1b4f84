"""Per-request accounting of the collectives a rank takes part in."""

from __future__ import annotations

from collections import defaultdict


class CommStats:
    """Calls and bytes per collective kind (``"all_to_all"``, ``"all_gather"``, ``"broadcast"``...).

    Bytes are what this rank sends to other ranks: for an all-to-all the chunks it scatters to the others
    (its own chunk stays), for an all-gather its shard once per other rank, for a broadcast the tensor once
    per receiving rank when this rank is the source. A broadcast PAB step skips its attention's collectives
    entirely, so they are simply not counted.
    """

    def __init__(self) -> None:
        self._calls: dict[str, int] = defaultdict(int)
        self._bytes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, nbytes: int) -> None:
        self._calls[kind] += 1
        self._bytes[kind] += int(nbytes)

    def reset(self) -> None:
        self._calls.clear()
        self._bytes.clear()

    def calls(self, kind: str) -> int:
        return self._calls.get(kind, 0)

    def bytes(self, kind: str) -> int:
        return self._bytes.get(kind, 0)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{kind: {"calls": n, "bytes": b}}`` plus ``"total"``, in a stable order."""
        out = {k: {"calls": self._calls[k], "bytes": self._bytes[k]} for k in sorted(self._calls)}
        out["total"] = {"calls": sum(self._calls.values()), "bytes": sum(self._bytes.values())}
        return out
