"""Background Blending (BB, paper Eq. 4).

After every step the target latent takes the source latent wherever ``m_back`` = 1, the
complement of the union of the (dilated) source-object masks at latent resolution. The target's
x0 estimate, which is what gets decoded after the last step, is blended the same way with the
source's x0 estimate, so the final background is the source's exactly (in latent space).

The ALE authors' code differs in two places, each an option here (``preset="authors"`` of
:class:`~aledit.methods.ale.ALEConfig` selects both):

* when: it blends only ``x_t``, after every step but the first (``start_step=1``,
  ``blend_x0=False``); the decoded x0 estimate of the last step is never blended, so the
  blends that reach the image are those after steps 1 .. N-2 (0-based);
* where: its ``m_back`` is the complement of :func:`~aledit.masks.ops.multiscale_nearest_union`
  of the union (``background_region(..., "multiscale-nearest")``), not of the any-pooled masks.
"""

from __future__ import annotations

import torch

from ..masks.ops import downsample_any, multiscale_nearest_union
from ..samplers.base import BranchLatents

__all__ = ["BB_MASKS", "BackgroundBlend", "background_region"]

BB_MASKS = ("any-pool", "multiscale-nearest")


def background_region(object_masks: torch.Tensor, hw: tuple[int, int], how: str = "any-pool") -> torch.Tensor:
    """``m_back`` at latent resolution: ``[N, H, W]`` bool object masks -> ``[h, w]`` bool,
    True = keep the source.

    ``how``: ``"any-pool"`` (a latent cell is object when any pixel of any mask it covers is;
    the paper's m_back at latent size) or ``"multiscale-nearest"`` (the authors' code: the union
    of floor-nearest resizes of the masks' union at ``hw`` and at 1/2, 1/4, 1/8 of it).
    """
    if how == "any-pool":
        return ~downsample_any(object_masks, hw).any(dim=0)
    if how == "multiscale-nearest":
        return ~multiscale_nearest_union(object_masks.any(dim=0), hw)
    raise ValueError(f"background mask must be one of {', '.join(BB_MASKS)}, got {how!r}")


class BackgroundBlend:
    """Latent hook for Eq. 4.

    Args:
        background: ``[h, w]`` bool at latent resolution, True = keep the source.
        start_step: first step (0-based) after which to blend; 0 = every step (Eq. 4), 1 = the
            authors' code.
        blend_x0: also blend the target's x0 estimate (what is decoded after the last step)
            with the source's; the authors' code blends ``x_t`` only.
    """

    def __init__(self, background: torch.Tensor, start_step: int = 0, blend_x0: bool = True):
        self.background = background.bool()
        self.start_step = start_step
        self.blend_x0 = blend_x0

    def __call__(self, step: int, latents: BranchLatents) -> BranchLatents:
        if step < self.start_step:
            return latents
        keep = self.background.to(latents.target.device)[None, None]
        if not self.blend_x0:
            return latents.replace(target=torch.where(keep, latents.source, latents.target))
        return latents.replace(
            target=torch.where(keep, latents.source, latents.target),
            target_x0=torch.where(keep, latents.source_x0, latents.target_x0),
        )
