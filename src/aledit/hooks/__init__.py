"""Latent hooks: changes to the branch latents after each sampler step."""

from .background_blend import BackgroundBlend

__all__ = ["BackgroundBlend"]
