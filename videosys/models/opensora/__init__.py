"""Open-Sora 1.2: the STDiT3 transformer and the Open-Sora VAE v1.2 (spatial SDXL VAE + temporal VAE)."""

from .stdit3 import STDiT3, STDiT3Config
from .vae import OpenSoraVAE

__all__ = ["OpenSoraVAE", "STDiT3", "STDiT3Config"]
