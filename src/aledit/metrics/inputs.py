"""Images and masks as the evaluation reads them (PIE-Bench and the ALE authors' ``evaluate/``).

* Images are RGB ``uint8`` arrays ``[H, W, 3]``. The edited image is resized to the source size
  with PIL bicubic before any metric (the authors' ``Image.open(edited).resize(source.size)``).
* Masks are ``float64`` arrays ``[H, W]`` in ``[0, 1]``, 1 = object, at the source size. A PIL
  mask is read as the authors do: ``convert("L") / 255``, so anti-aliased edges stay soft. Bool,
  0/1 and 0/255 arrays are accepted too; a mask of another size is resized nearest-neighbour.
* The background is ``1 - union(masks)``; the union is the pixel-wise maximum
  (``ImageChops.lighter`` in the authors' code).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ImageLike",
    "MaskLike",
    "MetricUnavailable",
    "background_mask",
    "load_eval_mask",
    "match_size",
    "to_mask",
    "to_rgb_array",
    "unavailable_value",
    "union_mask",
]

logger = logging.getLogger(__name__)

ImageLike = Union[Image.Image, np.ndarray]
MaskLike = Union[Image.Image, np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric that cannot be computed here, with a one-line reason a user can act on.

    Attributes:
        metric: the result key, e.g. ``"bg_lpips"``.
        reason: why, e.g. ``"torchvision is not installed (LPIPS needs its SqueezeNet backbone)"``.
    """

    metric: str
    reason: str


@functools.lru_cache(maxsize=None)
def _warn_once(metric: str, reason: str) -> None:
    logger.warning("%s is unavailable and reported as NaN: %s", metric, reason)


def unavailable_value(record: MetricUnavailable) -> float:
    """NaN for an unavailable metric; logs the reason once per (metric, reason)."""
    _warn_once(record.metric, record.reason)
    return math.nan


def to_rgb_array(image: ImageLike, name: str = "image") -> np.ndarray:
    """An RGB ``uint8`` array ``[H, W, 3]`` from a PIL image or a ``uint8`` array.

    Grey ``[H, W]`` arrays are repeated to 3 channels; a 4th (alpha) channel is dropped, as
    ``PIL.Image.convert("RGB")`` does.
    """
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must be a PIL image or a uint8 array with values 0-255, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{name} must be [H, W], [H, W, 3] or [H, W, 4], got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array[:, :, :3])


def match_size(source: ImageLike, edited: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    """Source and edited images as RGB ``uint8`` arrays, the edited one resized (bicubic) to the
    source's ``[H, W]`` when their sizes differ."""
    src = to_rgb_array(source, "source image")
    edt = to_rgb_array(edited, "edited image")
    if edt.shape[:2] != src.shape[:2]:
        height, width = src.shape[:2]
        resized = Image.fromarray(edt).resize((width, height), Image.Resampling.BICUBIC)
        edt = np.array(resized, dtype=np.uint8)
    return src, edt


def _nearest(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    # Pixel-centre nearest neighbour ("nearest-exact"), as PIL's NEAREST.
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * array.shape[0] / hw[0]).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * array.shape[1] / hw[1]).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def to_mask(mask: MaskLike, hw: tuple[int, int], name: str = "mask") -> np.ndarray:
    """A ``float64`` mask ``[H, W]`` in ``[0, 1]`` at ``hw = (H, W)``.

    PIL images: ``convert("L") / 255`` (the authors' reading: an RGBA mask is read by its
    luminance, not its alpha). Bool arrays: 0/1. Integer arrays: 0/1 as is, otherwise divided by
    255. Float arrays must already lie in ``[0, 1]``.
    """
    if isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    else:
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., 0]
        if array.dtype == np.bool_:
            array = array.astype(np.float64)
        elif np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float64)
            if array.size and array.max() > 1:
                array = array / 255.0
        else:
            array = array.astype(np.float64)
            if array.size and (array.min() < 0 or array.max() > 1):
                raise ValueError(
                    f"{name} has values in [{array.min():g}, {array.max():g}]; float masks must lie in [0, 1]"
                )
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [H, W], got shape {tuple(array.shape)}")
    if array.shape != tuple(hw):
        array = _nearest(array, hw)
    return array


def load_eval_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads an evaluation mask file as the authors do: ``float64 [H, W]`` = ``L`` channel / 255.

    ALE-Bench ships some masks as opaque RGBA; reading their alpha would mark the whole image as
    object, reading their luminance gives the object.
    """
    with Image.open(path) as image:
        return to_mask(image, (image.height, image.width), name=os.fspath(path))


def union_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel-wise maximum of ``[H, W]`` masks, ``[H, W]``."""
    if len(masks) == 0:
        raise ValueError("need at least one object mask")
    return np.maximum.reduce([np.asarray(m, dtype=np.float64) for m in masks])


def background_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """``1 - union(masks)``: the region outside every edited object, ``[H, W]``."""
    return 1.0 - union_mask(masks)
