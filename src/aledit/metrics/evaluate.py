"""All ALE-Bench metrics of one edit: the models bundle and :func:`evaluate_edit`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..prompts import join_phrases
from .background import Backend, LpipsFn, background_metrics, load_lpips
from .clip_score import DEFAULT_CLIP, ClipEncoder, clip_score, load_clip
from .inputs import ImageLike, MaskLike, MetricUnavailable, match_size, to_mask, unavailable_value
from .leakage import clip_metrics
from .structure import DEFAULT_DINO, DinoKeyExtractor, load_dino, structure_distance

__all__ = ["CLIP_KEYS", "METRIC_KEYS", "MetricModels", "evaluate_edit"]

CLIP_KEYS = ("te_leakage", "te_leakage_per_phrase", "ti_leakage", "edited_clip", "whole_clip", "source_clip")
METRIC_KEYS = (*CLIP_KEYS, "structure_distance", "bg_psnr", "bg_lpips", "bg_mse", "bg_ssim")


@dataclass(frozen=True, eq=False)
class MetricModels:
    """The models the metrics need. A missing one makes its metrics NaN (reason logged once).

    Attributes:
        clip: CLIP encoder for TE/TI/Edited/whole/source CLIP scores.
        dino: DINO key extractor for the structure distance.
        lpips: LPIPS function, or the reason it is unavailable.
        device: where background metrics are computed.
        structure_antialias: antialias the resize before DINO (default); ``False`` resizes as
            PIE-Bench's torchvision 0.13 did (see :mod:`aledit.metrics.structure`).
    """

    clip: ClipEncoder | None = None
    dino: DinoKeyExtractor | None = None
    lpips: LpipsFn | MetricUnavailable | None = None
    device: str | torch.device = "cpu"
    structure_antialias: bool = True

    @classmethod
    def from_pretrained(
        cls,
        clip_id: str | os.PathLike = DEFAULT_CLIP,
        dino_id: str | os.PathLike = DEFAULT_DINO,
        device: str | torch.device = "cpu",
        lpips: bool = True,
    ) -> "MetricModels":
        """Loads CLIP and DINO by hub id or local folder, and LPIPS (SqueezeNet) when ``lpips`` and
        torchvision are available; otherwise LPIPS is a :class:`MetricUnavailable`."""
        lpips_model: LpipsFn | MetricUnavailable = (
            load_lpips("squeeze", device)
            if lpips
            else MetricUnavailable("bg_lpips", "LPIPS not requested (lpips=False)")
        )
        return cls(clip=load_clip(clip_id, device), dino=load_dino(dino_id, device), lpips=lpips_model, device=device)

    def unavailable(self) -> dict[str, str]:
        """Metric keys that will be NaN, with the reason."""
        out: dict[str, str] = {}
        if self.clip is None:
            out.update({k: "no CLIP model (MetricModels.clip is None)" for k in CLIP_KEYS})
        if self.dino is None:
            out["structure_distance"] = "no DINO model (MetricModels.dino is None)"
        if self.lpips is None:
            out["bg_lpips"] = "no LPIPS model given (MetricModels.lpips is None)"
        elif isinstance(self.lpips, MetricUnavailable):
            out["bg_lpips"] = self.lpips.reason
        return out


def evaluate_edit(
    source: ImageLike,
    edited: ImageLike,
    masks: Sequence[MaskLike],
    source_phrases: Sequence[str],
    target_phrases: Sequence[str],
    models: MetricModels,
    pie_bench_quirk: bool = True,
    backend: Backend = "auto",
) -> dict[str, float]:
    """Every metric of ALE-Bench's tables for one edit.

    Args:
        source: the source image (PIL or RGB ``uint8 [H, W, 3]``).
        edited: the edited image; resized (bicubic) to the source size first.
        masks: the source mask of each edited object, ``[H, W]`` (bool, 0/1, 0/255, ``[0, 1]`` float
            or a PIL image read as ``L / 255``), resized nearest to the source size if needed.
        source_phrases, target_phrases: ``y^S_i`` and ``y^T_i``, one per mask, in the same order.
        models: see :class:`MetricModels`.
        pie_bench_quirk: structure distance on 0-255 values as PIE-Bench (see ``structure.py``).
        backend: ``"auto"``, ``"torchmetrics"`` or ``"builtin"`` for PSNR/MSE/SSIM.

    Returns:
        ``te_leakage``, ``te_leakage_per_phrase``, ``ti_leakage`` (NaN for one object),
        ``edited_clip``, ``whole_clip``, ``source_clip`` (source image vs the joined source
        phrases, PIE-Bench's reference), ``structure_distance``, ``bg_psnr`` (``inf`` for an
        untouched background), ``bg_lpips``, ``bg_mse``, ``bg_ssim``.
    """
    if not (len(masks) == len(source_phrases) == len(target_phrases)) or len(masks) == 0:
        raise ValueError(
            "need one mask, one source phrase and one target phrase per edited object; got "
            f"{len(masks)} masks, {len(source_phrases)} source and {len(target_phrases)} target phrases"
        )
    src, edt = match_size(source, edited)
    hw = src.shape[:2]
    object_masks = [to_mask(m, hw, name=f"mask {i} ({source_phrases[i]!r})") for i, m in enumerate(masks)]
    reasons = models.unavailable()

    results: dict[str, float] = {}
    if models.clip is not None:
        results.update(clip_metrics(models.clip, edt, object_masks, target_phrases))
        results["source_clip"] = clip_score(models.clip, src, join_phrases(list(source_phrases)))
    else:
        results.update({k: unavailable_value(MetricUnavailable(k, reasons[k])) for k in CLIP_KEYS})
    if models.dino is not None:
        results["structure_distance"] = structure_distance(
            models.dino, src, edt, pie_bench_quirk, antialias=models.structure_antialias
        )
    else:
        results["structure_distance"] = unavailable_value(
            MetricUnavailable("structure_distance", reasons["structure_distance"])
        )
    results.update(
        background_metrics(src, edt, object_masks, lpips=models.lpips, backend=backend, device=models.device)
    )
    return {key: results.get(key, math.nan) for key in METRIC_KEYS}
