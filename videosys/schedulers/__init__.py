"""Diffusion samplers. Each request gets a fresh scheduler object: they are stateful (set_timesteps)."""

from .diffusers_schedulers import DiffusersSchedulerFactory

__all__ = ["DiffusersSchedulerFactory"]
