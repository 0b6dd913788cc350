"""The diffusion side of FeatInv: frozen bases, the feature-conditioned ControlNet, the model and its sampler."""

from featinv.diffusion.bases import PROMPT, DiffusionBase, PixelBase, StableDiffusionBase, load_base
from featinv.diffusion.controlnet import FeatInvControlNet, controlled_unet
from featinv.diffusion.model import FeatInv, Reconstruction
from featinv.diffusion.sampler import denoise, guided_prediction, seeded_noise

__all__ = [
    "PROMPT", "DiffusionBase", "FeatInv", "FeatInvControlNet", "PixelBase", "Reconstruction",
    "StableDiffusionBase", "controlled_unet", "denoise", "guided_prediction", "load_base", "seeded_noise",
]
