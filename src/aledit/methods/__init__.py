"""Editing methods, each a composition of attention processors, latent hooks and embeddings."""

from .ale import ALEConfig, ALEMethod
from .base import EditPlan

__all__ = ["ALEConfig", "ALEMethod", "EditPlan"]
