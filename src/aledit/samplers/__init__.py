"""Dual-branch samplers: the denoising loops that methods attach their controls to."""

from .base import BranchLatents, LatentHook, NoisePredictor
from .virtual_inversion import VirtualInversionConfig, VirtualInversionSampler, virtual_inversion_step

__all__ = [
    "BranchLatents",
    "LatentHook",
    "NoisePredictor",
    "VirtualInversionConfig",
    "VirtualInversionSampler",
    "virtual_inversion_step",
]
