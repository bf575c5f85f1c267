"""ALE-Bench / PIE-Bench evaluation metrics (paper Sec. 4.1, Eq. 5-6, appendix B).

* ``background``: PSNR, LPIPS, MSE, SSIM outside every edited object (masked pixels stay in the mean).
* ``clip_score``: ``100 * max(cos, 0)`` CLIP score of masked images, injectable encoder.
* ``leakage``: TE leakage, TI leakage, Edited, whole-image CLIP.
* ``structure``: DINO ViT-B/8 key self-similarity distance.
* ``evaluate``: :class:`MetricModels` and :func:`evaluate_edit`, every metric of one edit.

torchmetrics is optional (``pip install 'aledit[metrics]'``); LPIPS also needs torchvision and is
NaN, with the reason logged once, without it.
"""

from .background import (
    TorchmetricsLpips,
    background_metrics,
    load_lpips,
    lpips_distance,
    masked_unit_image,
    mse,
    psnr,
    ssim,
)
from .clip_score import DEFAULT_CLIP, ClipEncoder, HFClipEncoder, clip_score, clip_scores, load_clip, mask_image
from .evaluate import CLIP_KEYS, METRIC_KEYS, MetricModels, evaluate_edit
from .inputs import (
    MetricUnavailable,
    background_mask,
    load_eval_mask,
    match_size,
    to_mask,
    to_rgb_array,
    union_mask,
)
from .leakage import clip_metrics, edited_clip, te_leakage, te_leakage_per_phrase, ti_leakage, whole_clip
from .structure import (
    DEFAULT_DINO,
    DinoKeyExtractor,
    dino_pixel_values,
    dino_resize_hw,
    key_self_similarity,
    load_dino,
    structure_distance,
)

__all__ = [
    "CLIP_KEYS",
    "DEFAULT_CLIP",
    "DEFAULT_DINO",
    "METRIC_KEYS",
    "ClipEncoder",
    "DinoKeyExtractor",
    "HFClipEncoder",
    "MetricModels",
    "MetricUnavailable",
    "TorchmetricsLpips",
    "background_mask",
    "background_metrics",
    "clip_metrics",
    "clip_score",
    "clip_scores",
    "dino_pixel_values",
    "dino_resize_hw",
    "edited_clip",
    "evaluate_edit",
    "key_self_similarity",
    "load_clip",
    "load_dino",
    "load_eval_mask",
    "load_lpips",
    "lpips_distance",
    "mask_image",
    "masked_unit_image",
    "match_size",
    "mse",
    "psnr",
    "ssim",
    "structure_distance",
    "te_leakage",
    "te_leakage_per_phrase",
    "ti_leakage",
    "to_mask",
    "to_rgb_array",
    "union_mask",
    "whole_clip",
]
