"""The error a batch config raises: every problem found, each prefixed with its YAML path."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigError


class BatchConfigError(ConfigError):
    """A batch config (or its prompts) has errors. ``errors`` lists them all, one line each, in the order
    found; ``str()`` is a header line followed by the errors."""

    def __init__(self, errors: Iterable[str], source: str | None = None) -> None:
        self.errors: list[str] = list(dict.fromkeys(errors))  # ordered, without repeats
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.errors)
        header = f"batch config{where}: {n} error{'s' if n != 1 else ''}"
        super().__init__("\n".join([header, *(f"  {e}" for e in self.errors)]))

    def __reduce__(self) -> tuple:
        return type(self), (self.errors, self.source)
