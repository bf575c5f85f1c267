"""Where masks come from: the :class:`MaskProvider` interface and user-given masks.

A provider maps ``(image, phrases)`` to one mask per phrase. Grounded-SAM and attention-derived
providers implement the same interface, so the pipeline never knows which one produced a mask.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from .ops import MaskError, load_mask

__all__ = ["GivenMasks", "MaskProvider"]


@runtime_checkable
class MaskProvider(Protocol):
    """Produces one boolean mask ``[H, W]`` (image resolution) per phrase.

    Implementations raise :class:`~aledit.masks.MaskError` naming the phrase when an object
    cannot be found, never return an empty mask silently.
    """

    def __call__(self, image: Image.Image, phrases: list[str]) -> dict[str, torch.Tensor]: ...


class GivenMasks:
    """Masks the user supplies: a mapping phrase -> path, PIL image, array or tensor."""

    def __init__(self, masks: dict):
        self.masks = dict(masks)

    def __call__(self, image: Image.Image, phrases: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for phrase in phrases:
            if phrase not in self.masks:
                have = ", ".join(repr(k) for k in self.masks) or "none"
                raise MaskError(f"no mask for edited object {phrase!r} (masks given for: {have})")
            out[phrase] = load_mask(self.masks[phrase], size=image.size, name=phrase)
        return out
