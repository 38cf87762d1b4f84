"""Prompt text handling shared by the pipelines: caption cleaning and prompt suffixes."""

from .cleaning import clean_caption, with_aesthetic_score

__all__ = ["clean_caption", "with_aesthetic_score"]
