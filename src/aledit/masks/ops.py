"""Pure mask operations: loading, resizing, dilation, unions and the regions of Eq. 3-4.

Masks are boolean tensors ``[H, W]`` (one object) or ``[N, H, W]`` (N objects), True = object.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MASK_RESIZES",
    "MaskError",
    "ObjectMasks",
    "ObjectNotFoundError",
    "dilate",
    "dilation_radius",
    "downsample_any",
    "exclusive_regions",
    "load_mask",
    "multiscale_nearest_union",
    "resize_floor_nearest",
    "resize_masks",
    "resize_nearest",
]


class MaskError(ValueError):
    """A mask that is missing, unreadable or empty."""


class ObjectNotFoundError(MaskError):
    """A mask provider could not find an object in the image.

    Attributes:
        phrase: the (first) phrase not found.
        best_score: the provider's best score for it (``None``: nothing was proposed).
    """

    def __init__(self, message: str, phrase: str, best_score: float | None):
        super().__init__(message)
        self.phrase = phrase
        self.best_score = best_score

    def __reduce__(self):
        return (type(self), (str(self), self.phrase, self.best_score))


def load_mask(source, size: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """Reads a mask from a path, PIL image, numpy array or tensor; returns ``[H, W]`` bool.

    A pixel is object when its value is at least half the range (grey level >= 128 for images;
    for arrays and tensors: > 0.5 for floats, > 0 for bools and ints below 2, >= 128 for uint8).
    Images with a varying alpha channel are read by their alpha (transparent = background);
    opaque RGBA images, like ALE-Bench's, by their grey level. ``size`` is ``(width, height)``;
    resizing is nearest-neighbour.
    """
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise MaskError(f"mask file for {name!r} not found: {os.fspath(source)}")
        try:
            with Image.open(source) as im:
                im.load()
                source = im.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise MaskError(f"mask file for {name!r} is not a readable image: {os.fspath(source)} ({exc})") from None
    if isinstance(source, Image.Image):
        alpha = np.asarray(source.getchannel("A")) if source.mode in ("RGBA", "LA") else None
        if alpha is not None and alpha.min() < alpha.max():
            array = alpha  # a drawn mask: opaque = object
        else:  # opaque everywhere (e.g. ALE-Bench's RGBA masks): the grey level decides
            array = np.asarray(source.convert("L"))
    elif isinstance(source, torch.Tensor):
        array = source.detach().cpu().numpy()
    else:
        array = np.asarray(source)
    if array.ndim == 3:
        array = array[..., 0] if array.shape[-1] in (1, 3, 4) else array[0]
    if array.ndim != 2:
        raise MaskError(f"mask for {name!r} must be 2-D, got shape {tuple(array.shape)}")
    mask = torch.from_numpy(np.ascontiguousarray(_binarize(array)))
    if size is not None:
        mask = resize_nearest(mask, (size[1], size[0]))
    return mask


def _binarize(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array > 0.5
    if array.max(initial=0) <= 1:  # 0/1 integer masks
        return array > 0
    return array >= 128


def resize_nearest(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[H, W]`` or ``[N, H, W]`` bool masks to ``hw``."""
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask.clone()
    squeeze = mask.ndim == 2
    m = mask[None, None] if squeeze else mask[:, None]
    out = F.interpolate(m.float(), size=hw, mode="nearest-exact") > 0.5
    return out[0, 0] if squeeze else out[:, 0]


def downsample_any(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resizes masks so that a cell is object when *any* pixel it covers is (adaptive max pool).

    Used for latents and attention layers: an object never vanishes at a coarse resolution.
    """
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask.clone()
    squeeze = mask.ndim == 2
    m = mask[None, None] if squeeze else mask[:, None]
    if m.shape[-2] >= hw[0] and m.shape[-1] >= hw[1]:
        out = F.adaptive_max_pool2d(m.float(), hw) > 0.5
    else:  # upsampling: nearest is exact
        out = F.interpolate(m.float(), size=hw, mode="nearest-exact") > 0.5
    return out[0, 0] if squeeze else out[:, 0]


def resize_floor_nearest(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[H, W]`` or ``[N, H, W]`` bool masks to ``hw`` that reads
    source index ``floor(i * H / h)`` (PyTorch's ``mode="nearest"``, torchvision's
    ``InterpolationMode.NEAREST`` on tensors: the ALE authors' resize).

    :func:`resize_nearest` reads the pixel nearest to the cell's centre instead
    (``floor((i + 0.5) * H / h)``); downsampling 768 -> 96 the two pick different pixels.
    """
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask.clone()
    squeeze = mask.ndim == 2
    m = mask[None, None] if squeeze else mask[:, None]
    out = F.interpolate(m.float(), size=hw, mode="nearest") > 0.5
    return out[0, 0] if squeeze else out[:, 0]


def multiscale_nearest_union(
    mask: torch.Tensor, hw: tuple[int, int], factors: tuple[int, ...] = (1, 2, 4, 8)
) -> torch.Tensor:
    """The ALE authors' background-blend foreground: ``[H, W]`` bool -> ``[h, w]`` bool.

    The union over ``f`` in ``factors`` of ``mask`` resized (:func:`resize_floor_nearest`) to
    ``(h // f, w // f)`` and back to ``(h, w)``: coarse copies widen the region by up to ``f``
    latent cells wherever the fine resize would drop a thin part. A side that ``f`` would make 0
    is kept at 1 (the authors' code fails there; latents below 8 cells only).
    """
    out = torch.zeros(hw, dtype=torch.bool, device=mask.device)
    for f in factors:
        coarse = resize_floor_nearest(mask, (max(1, hw[0] // f), max(1, hw[1] // f)))
        out |= resize_floor_nearest(coarse, hw)
    return out


MASK_RESIZES = ("any-pool", "nearest")


def resize_masks(mask: torch.Tensor, hw: tuple[int, int], how: str = "any-pool") -> torch.Tensor:
    """Masks at an attention layer's or a latent's resolution, ``[..., H, W]`` -> ``[..., h, w]``.

    ``how``: ``"any-pool"`` (:func:`downsample_any`: a cell is object when any pixel it covers
    is, the paper's reading) or ``"nearest"`` (:func:`resize_floor_nearest`, the authors' code).
    """
    if how == "any-pool":
        return downsample_any(mask, hw)
    if how == "nearest":
        return resize_floor_nearest(mask, hw)
    raise ValueError(f"mask resize must be one of {', '.join(MASK_RESIZES)}, got {how!r}")


def dilation_radius(ratio: float, size: tuple[int, int]) -> int:
    """Dilation in pixels for a ratio of the image's longer side (paper: 0.01 -> 7 px at 768)."""
    if ratio < 0:
        raise MaskError(f"dilation ratio must be >= 0, got {ratio}")
    return int(math.floor(ratio * max(size) + 1e-9))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilates ``[H, W]`` or ``[N, H, W]`` masks with a disk of ``radius`` pixels."""
    if radius <= 0:
        return mask.clone()
    y, x = torch.meshgrid(torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij")
    disk = ((x * x + y * y) <= radius * radius).float()[None, None]
    squeeze = mask.ndim == 2
    m = (mask[None, None] if squeeze else mask[:, None]).float()
    out = F.conv2d(m, disk, padding=radius) > 0.5
    return out[0, 0] if squeeze else out[:, 0]


def exclusive_regions(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits ``[N, H, W]`` masks into the regions of Eq. 3.

    Returns:
        objects: ``[N, H, W]`` bool, pixels covered by object i and no other object.
        base: ``[H, W]`` bool, background plus every pixel covered by two or more objects
        (there the base output is used, so no object wins an overlap).
    """
    count = masks.sum(dim=0)
    objects = masks & (count == 1)[None]
    return objects, count != 1


@dataclass(frozen=True)
class ObjectMasks:
    """Per-object masks at the working resolution (dilated, boolean).

    Attributes:
        masks: ``[N, H, W]`` bool, in the order of the edits.
        names: the source phrase of each mask.
    """

    masks: torch.Tensor
    names: tuple[str, ...]

    @classmethod
    def from_sources(
        cls,
        sources: dict,
        names: list[str] | tuple[str, ...],
        size: tuple[int, int],
        dilation_ratio: float = 0.01,
    ) -> "ObjectMasks":
        """Loads one mask per name from ``sources`` (path, image or array), resizes to ``size``
        ``(width, height)``, checks it is non-empty and dilates it."""
        missing = [n for n in names if n not in sources]
        if missing:
            have = ", ".join(repr(k) for k in sources) or "none"
            raise MaskError(
                f"no mask for edited object(s) {', '.join(repr(m) for m in missing)} (masks given for: {have}); "
                "pass one mask per source phrase"
            )
        radius = dilation_radius(dilation_ratio, size)
        out = []
        for name in names:
            mask = load_mask(sources[name], size=size, name=name)
            if not bool(mask.any()):
                raise MaskError(
                    f"mask for {name!r} is empty after resizing to {size[0]}x{size[1]}; "
                    "check the file (object pixels must be non-zero)"
                )
            out.append(dilate(mask, radius))
        return cls(torch.stack(out), tuple(names))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.masks.shape[-1]), int(self.masks.shape[-2])

    def union(self) -> torch.Tensor:
        return self.masks.any(dim=0)

    def background(self) -> torch.Tensor:
        """``m_back`` of Eq. 4: pixels outside every object, ``[H, W]`` bool."""
        return ~self.union()

    def at(self, hw: tuple[int, int]) -> torch.Tensor:
        """Masks at another resolution ``(h, w)``, any-pooled, ``[N, h, w]`` bool."""
        return downsample_any(self.masks, hw)
