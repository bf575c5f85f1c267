"""Per-object masks: operations, the mask set used by an edit, and mask providers."""

from .ops import (
    MaskError,
    ObjectMasks,
    dilate,
    dilation_radius,
    downsample_any,
    exclusive_regions,
    load_mask,
    resize_nearest,
)
from .provider import GivenMasks, MaskProvider

__all__ = [
    "GivenMasks",
    "MaskError",
    "MaskProvider",
    "ObjectMasks",
    "dilate",
    "dilation_radius",
    "downsample_any",
    "exclusive_regions",
    "load_mask",
    "resize_nearest",
]
