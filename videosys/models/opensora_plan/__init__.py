"""Open-Sora-Plan v1.1.0 (``LanguageBind/Open-Sora-Plan-v1.1.0``): the LatteT2V transformer variant and the
CausalVAE (subfolder ``vae``)."""

from .causal_vae import CausalVAE, CausalVAEConfig
from .transformer import OpenSoraPlanConfig, OpenSoraPlanTransformer3D

__all__ = ["CausalVAE", "CausalVAEConfig", "OpenSoraPlanConfig", "OpenSoraPlanTransformer3D"]
