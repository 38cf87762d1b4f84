"""Errors a user can act on. Each message names the field or file, the value and what is allowed."""

from __future__ import annotations


class VideoSysError(Exception):
    """Base class of the errors VideoSys raises for bad input or missing files."""


class RequestError(VideoSysError, ValueError):
    """A generation request field is not allowed for the model."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} not allowed (allowed: {allowed})")

    def __reduce__(self) -> tuple:  # crosses process boundaries (worker pool) intact
        return type(self), (self.field, self.value, self.allowed)


class ConfigError(VideoSysError, ValueError):
    """A model or batch config is malformed."""


class UnknownModelError(ConfigError):
    """The model name is not in the registry."""


class WeightsNotFoundError(VideoSysError, FileNotFoundError):
    """A checkpoint folder or one of its files is missing; the message says how to provide it."""


class WorkerError(VideoSysError, RuntimeError):
    """A rank of the worker pool died, hung or failed outside the request's control. ``rank`` is the world
    rank that failed (``None`` when the pool itself could not start); the pool is torn down and rebuilt on
    the next request."""

    def __init__(self, message: str, rank: int | None = None) -> None:
        self.rank = rank
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.rank)
