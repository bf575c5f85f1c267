"""Attribute-leakage and editing-performance CLIP metrics of ALE-Bench (paper Eq. 5-6, Sec. 4.1).

Notation: ``I_e`` the edited image, ``m_j`` the source mask of object ``j`` (N objects),
``y_i`` the target phrase of object ``i``, ``CLIP`` the score of ``clip_score.py``
(``100 * max(cos, 0)`` of the masked image ``uint8(I_e * m)``), ``Y = " and ".join(y_1..y_N)``.

* TE leakage, as the authors' code computes it: ``CLIP(I_e * (1 - U_j m_j), Y)``, the background
  against ALL target phrases joined in one prompt.
* TE leakage per phrase, Eq. 6 as printed: ``1/N sum_i CLIP(I_e * (1 - U_j m_j), y_i)``. It
  averages N separate scores instead of scoring one joined prompt; the two agree for N = 1 only.
  Reported beside TE, never instead of it (the paper's tables use the joined prompt).
* TI leakage, Eq. 5: ``1/(N(N-1)) sum_{i != j} CLIP(I_e * m_j, y_i)``, object ``j``'s region
  against the other objects' phrases; NaN for one object.
* Edited (editing performance): ``1/N sum_i CLIP(I_e * m_i, y_i)``.
* Whole-image CLIP: ``CLIP(I_e, Y)`` (PIE-Bench ``clip_similarity_target_image``).

Lower TE/TI is better, higher Edited is better. TE metrics are NaN when the masks cover the whole
image (the authors would score an all-black image there).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..prompts import join_phrases
from .clip_score import ClipEncoder, clip_scores, mask_image
from .inputs import ImageLike, MaskLike, background_mask, to_mask, to_rgb_array

__all__ = [
    "clip_metrics",
    "edited_clip",
    "te_leakage",
    "te_leakage_per_phrase",
    "ti_leakage",
    "whole_clip",
]


def _prepare(
    edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> tuple[np.ndarray, list[np.ndarray]]:
    if len(masks) == 0 or len(masks) != len(target_phrases):
        raise ValueError(
            f"need one mask per target phrase and at least one object, got {len(masks)} masks "
            f"and {len(target_phrases)} phrases"
        )
    image = to_rgb_array(edited, "edited image")
    hw = image.shape[:2]
    object_masks = [to_mask(m, hw, name=f"mask {i}") for i, m in enumerate(masks)]
    for i, (mask, phrase) in enumerate(zip(object_masks, target_phrases)):
        if not mask.any():
            raise ValueError(f"mask {i} (target {phrase!r}) is empty; every edited object needs a non-empty mask")
    return image, object_masks


def _off_diagonal_mean(scores: torch.Tensor) -> float:
    """Mean of ``scores[j, i]`` over ``i != j`` of an ``[N, N]`` table; NaN for N = 1."""
    n = scores.shape[0]
    if n < 2:
        return math.nan
    off = ~torch.eye(n, dtype=torch.bool)
    return float(scores[off].mean())


def _background_scores(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str], texts: list[str]
) -> torch.Tensor | None:
    """CLIP scores ``[len(texts)]`` of the background ``I_e * (1 - U m_j)``; None without one."""
    image, object_masks = _prepare(edited, masks, target_phrases)
    background = background_mask(object_masks)
    if not background.any():
        return None
    return clip_scores(encoder, [mask_image(image, background)], texts)[0]


def te_leakage(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> float:
    """``CLIP(I_e * (1 - U m_j), " and ".join(y))``; NaN when there is no background."""
    scores = _background_scores(encoder, edited, masks, target_phrases, [join_phrases(list(target_phrases))])
    return math.nan if scores is None else float(scores[0])


def te_leakage_per_phrase(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> float:
    """Eq. 6 as printed: ``1/N sum_i CLIP(I_e * (1 - U m_j), y_i)``; NaN when there is no background."""
    scores = _background_scores(encoder, edited, masks, target_phrases, list(target_phrases))
    return math.nan if scores is None else float(scores.mean())


def ti_leakage(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> float:
    """Eq. 5: ``1/(N(N-1)) sum_{i != j} CLIP(I_e * m_j, y_i)``; NaN for one object."""
    image, object_masks = _prepare(edited, masks, target_phrases)
    if len(object_masks) < 2:
        return math.nan
    scores = clip_scores(encoder, [mask_image(image, m) for m in object_masks], list(target_phrases))
    return _off_diagonal_mean(scores)


def edited_clip(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> float:
    """Editing performance: ``1/N sum_i CLIP(I_e * m_i, y_i)``."""
    image, object_masks = _prepare(edited, masks, target_phrases)
    scores = clip_scores(encoder, [mask_image(image, m) for m in object_masks], list(target_phrases))
    return float(torch.diagonal(scores).mean())


def whole_clip(encoder: ClipEncoder, edited: ImageLike, target_phrases: Sequence[str]) -> float:
    """``CLIP(I_e, " and ".join(y))`` on the unmasked edited image."""
    return float(clip_scores(encoder, [edited], [join_phrases(list(target_phrases))])[0, 0])


def clip_metrics(
    encoder: ClipEncoder, edited: ImageLike, masks: Sequence[MaskLike], target_phrases: Sequence[str]
) -> dict[str, float]:
    """All of the above from one batched encoder call (N + 2 images, N + 1 texts).

    Returns:
        ``te_leakage``, ``te_leakage_per_phrase``, ``ti_leakage``, ``edited_clip``, ``whole_clip``.
    """
    image, object_masks = _prepare(edited, masks, target_phrases)
    n = len(object_masks)
    background = background_mask(object_masks)
    images = [mask_image(image, m) for m in object_masks] + [mask_image(image, background), image]
    texts = list(target_phrases) + [join_phrases(list(target_phrases))]
    scores = clip_scores(encoder, images, texts)  # [N + 2, N + 1]
    objects = scores[:n, :n]  # [j, i] = CLIP(I_e * m_j, y_i)
    has_background = bool(background.any())
    return {
        "te_leakage": float(scores[n, n]) if has_background else math.nan,
        "te_leakage_per_phrase": float(scores[n, :n].mean()) if has_background else math.nan,
        "ti_leakage": _off_diagonal_mean(objects),
        "edited_clip": float(torch.diagonal(objects).mean()),
        "whole_clip": float(scores[n + 1, n]),
    }
