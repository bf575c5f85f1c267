"""CPAM's mask-guidance math (Vo et al., Sec. 3.4 "Mask refinement"): pure functions.

* :func:`area_kernel` / :func:`dilate_square`: the target mask ``M_t`` starts as the source mask
  ``M_s`` dilated by a square kernel of side ``int(sqrt(area) * ratio)`` (``ratio`` 0.1 for an
  object; CPAM's background task uses 0.001, which leaves the mask of any image under a
  megapixel-sized region unchanged), so ``M_t`` follows the object's size, not the image's.
* :func:`refine_from_attention`: ``M_t`` refined from the target's cross-attention over the
  target words: each map upsampled (nearest) to the output size, the maps averaged, min-max
  normalised, thresholded (0.45).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["area_kernel", "dilate_square", "refine_from_attention"]


def area_kernel(mask: torch.Tensor, ratio: float) -> int:
    """Side of CPAM's dilation kernel for ``mask`` ``[H, W]`` bool: ``int(sqrt(area) * ratio)``
    with ``area`` the number of True pixels."""
    if ratio < 0:
        raise ValueError(f"dilation ratio must be >= 0, got {ratio}")
    return int(math.sqrt(float(mask.sum())) * ratio)


def dilate_square(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Dilates ``[H, W]`` bool by a ``kernel x kernel`` square (centred; an even side reaches one
    pixel further down/right); ``kernel <= 1`` returns a copy. Output ``[H, W]`` bool."""
    if kernel <= 1:
        return mask.clone()
    before, after = kernel // 2, (kernel - 1) // 2
    m = F.pad(mask.float()[None, None], (before, after, before, after))
    return F.max_pool2d(m, kernel, stride=1)[0, 0] > 0.5


def refine_from_attention(maps: torch.Tensor, hw: tuple[int, int], threshold: float = 0.45) -> torch.Tensor:
    """The refined target mask from cross-attention maps; pure.

    Args:
        maps: ``[n, h', w']`` maps (each already averaged over heads and the target words; any
            mix of resolutions is fine once upsampled, so pass one resolution per call).
        hw: output ``(H, W)`` (the latent's).
        threshold: on the min-max normalised mean (reference 0.45).

    Returns:
        ``[H, W]`` bool: ``normalise(mean_n(upsample(maps))) >= threshold``; all False when the
        mean is constant (no blob to find).
    """
    up = F.interpolate(maps.float()[:, None], size=tuple(hw), mode="nearest")[:, 0]
    mean = up.mean(dim=0)
    low, high = mean.min(), mean.max()
    if not bool(high > low):
        return torch.zeros(tuple(hw), dtype=torch.bool, device=maps.device)
    return (mean - low) / (high - low) >= threshold
