"""Dual-branch samplers: the denoising loops that methods attach their controls to."""

from .base import BranchLatents, LatentHook, NoisePredictor
from .ddim import (
    DDIMInversion,
    DDIMInversionConfig,
    DDIMSamplerConfig,
    DualBranchDDIMSampler,
    Inversion,
    NullTextConfig,
    NullTextInversion,
    ddim_level_alphas,
    ddim_step,
    ddim_timesteps,
    ddim_x0,
)
from .inversion_cache import InversionCache, tensor_digest
from .virtual_inversion import VirtualInversionConfig, VirtualInversionSampler, virtual_inversion_step

__all__ = [
    "BranchLatents",
    "DDIMInversion",
    "DDIMInversionConfig",
    "DDIMSamplerConfig",
    "DualBranchDDIMSampler",
    "Inversion",
    "InversionCache",
    "LatentHook",
    "NoisePredictor",
    "NullTextConfig",
    "NullTextInversion",
    "VirtualInversionConfig",
    "VirtualInversionSampler",
    "ddim_level_alphas",
    "ddim_step",
    "ddim_timesteps",
    "ddim_x0",
    "tensor_digest",
    "virtual_inversion_step",
]
