"""Per-object masks: operations, the mask set used by an edit, and mask providers.

``grounded_sam`` and ``cache`` import only torch and PIL; transformers is imported when
:meth:`GroundedSAM.from_pretrained` is called.
"""

from .cache import CachedMaskProvider, image_digest
from .grounded_sam import (
    Detections,
    Detector,
    GroundedSAM,
    GroundingNotFoundError,
    Segmenter,
)
from .ops import (
    MaskError,
    ObjectMasks,
    ObjectNotFoundError,
    dilate,
    dilation_radius,
    downsample_any,
    exclusive_regions,
    load_mask,
    multiscale_nearest_union,
    resize_floor_nearest,
    resize_masks,
    resize_nearest,
)
from .provider import GivenMasks, MaskProvider

__all__ = [
    "CachedMaskProvider",
    "Detections",
    "Detector",
    "GivenMasks",
    "GroundedSAM",
    "GroundingNotFoundError",
    "MaskError",
    "MaskProvider",
    "ObjectMasks",
    "ObjectNotFoundError",
    "Segmenter",
    "dilate",
    "dilation_radius",
    "downsample_any",
    "exclusive_regions",
    "image_digest",
    "load_mask",
    "multiscale_nearest_union",
    "resize_floor_nearest",
    "resize_masks",
    "resize_nearest",
]
