"""Background Blending (BB, paper Eq. 4).

After every step the target latent takes the source latent wherever ``m_back`` = 1, the
complement of the union of the (dilated) source-object masks at latent resolution. The target's
x0 estimate, which is what gets decoded after the last step, is blended the same way with the
source's x0 estimate, so the final background is the source's exactly (in latent space). The
authors' code blends only ``x_t`` and skips the first step; Eq. 4 blends every step.
"""

from __future__ import annotations

import torch

from ..samplers.base import BranchLatents

__all__ = ["BackgroundBlend"]


class BackgroundBlend:
    """Latent hook for Eq. 4.

    Args:
        background: ``[h, w]`` bool at latent resolution, True = keep the source.
    """

    def __init__(self, background: torch.Tensor):
        self.background = background.bool()

    def __call__(self, step: int, latents: BranchLatents) -> BranchLatents:
        keep = self.background.to(latents.target.device)[None, None]
        return latents.replace(
            target=torch.where(keep, latents.source, latents.target),
            target_x0=torch.where(keep, latents.source_x0, latents.target_x0),
        )
