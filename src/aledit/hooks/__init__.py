"""Latent hooks: changes to the branch latents after each sampler step."""

from .background_blend import BackgroundBlend, background_region
from .local_blend import BlendRule, LocalBlend, word_mask

__all__ = ["BackgroundBlend", "BlendRule", "LocalBlend", "background_region", "word_mask"]
