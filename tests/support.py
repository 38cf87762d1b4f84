"""Helpers the test modules share (not fixtures)."""

from __future__ import annotations

from videosys import VideoSysEngine


def pipeline_of(engine: VideoSysEngine):
    """The loaded local pipeline of an engine (tests look inside it)."""
    return engine.load()._executor.pipeline
