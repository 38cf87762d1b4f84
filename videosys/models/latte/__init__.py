"""Latte text-to-video transformer."""

from .transformer import LatteConfig, LatteTransformer3D

__all__ = ["LatteConfig", "LatteTransformer3D"]
