"""Masks with no extra model: clusters of the diffusion model's own self-attention.

DPL (section 3.3) observes that self-attention maps follow the image's semantic layout. We
reconstruct the source image with the editing model itself (source branch only, prompt = the
object phrases joined with " and "), record

* the mean self-attention at one layer resolution (DPL: 32x32 for a 64x64 latent, i.e. half the
  latent side), ``S [HW, HW]`` (row p = where pixel p attends), and
* each object phrase's mean cross-attention over all layers, resized to the same grid and
  scaled to a maximum of 1 (DPL reads it at 16x16),

cluster the rows of ``S`` into V = 5 groups with k-means, and score each cluster v against each
object n with DPL's agreement ``sigma_nv = sum(A_n * M_v) / sum(M_v)`` (the mean of the object's
attention over the cluster). A cluster belongs to the object with the highest score when that
score exceeds TH = 0.2; an object's mask is the union of its clusters, resized to the image.
Every cluster belongs to at most one object, so these masks never overlap. An object that gets
no cluster raises :class:`~aledit.masks.MaskError` with its best score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ..attention.install import is_cross_attention, is_self_attention
from ..attention.recorder import AttentionRecorder, SelfAttentionRecorder
from ..attention.recording import RecordingAttnProcessor
from ..prompts import join_phrases, layout_prompt
from .ops import ObjectNotFoundError, resize_nearest

__all__ = ["AttentionMasks", "agreement_scores", "kmeans", "masks_from_attention"]

logger = logging.getLogger(__name__)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Clusters ``points [M, D]`` into ``k`` groups (k-means++ start, Lloyd steps); returns the
    label of every point ``[M]``. Deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    m = points.shape[0]
    k = min(k, m)
    centers = [points[torch.randint(m, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        dist = torch.cdist(points, torch.stack(centers)).amin(dim=1) ** 2
        if float(dist.sum()) <= 0:
            break
        centers.append(points[torch.multinomial(dist / dist.sum(), 1, generator=gen)].squeeze(0))
    centers = torch.stack(centers)
    labels = torch.cdist(points, centers).argmin(dim=1)
    for _ in range(iterations):
        new_centers = torch.stack(
            [points[labels == c].mean(dim=0) if bool((labels == c).any()) else centers[c] for c in range(len(centers))]
        )
        new_labels = torch.cdist(points, new_centers).argmin(dim=1)
        centers = new_centers
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def agreement_scores(cross: torch.Tensor, clusters: torch.Tensor, k: int) -> torch.Tensor:
    """DPL's agreement ``sigma[n, v] = sum(A_n * M_v) / sum(M_v)``.

    Args:
        cross: ``[N, HW]`` cross-attention of each object (scaled to max 1).
        clusters: ``[HW]`` cluster label of every pixel.
    Returns:
        ``[N, k]`` scores (0 for an empty cluster).
    """
    members = F.one_hot(clusters, k).float()  # [HW, k]
    sizes = members.sum(dim=0).clamp_min(1)
    return (cross.float() @ members) / sizes


@dataclass(frozen=True)
class ClusterAssignment:
    """Result of :func:`masks_from_attention`: masks ``[N, h, w]`` and scores ``[N, V]``."""

    masks: torch.Tensor
    scores: torch.Tensor
    clusters: torch.Tensor


def masks_from_attention(
    self_attention: torch.Tensor,
    cross_attention: torch.Tensor,
    hw: tuple[int, int],
    n_clusters: int = 5,
    threshold: float = 0.2,
    seed: int = 0,
) -> ClusterAssignment:
    """Pure part of the provider.

    Args:
        self_attention: ``[HW, HW]`` mean self-attention at resolution ``hw``.
        cross_attention: ``[N, h, w]`` object cross-attention maps at resolution ``hw``.
    """
    clusters = kmeans(self_attention.float(), n_clusters, seed=seed)
    scores = agreement_scores(cross_attention.flatten(1), clusters, n_clusters)
    best = scores.argmax(dim=0)  # owner candidate of every cluster
    owned = (scores.gather(0, best[None])[0] > threshold)  # [V]
    masks = torch.stack(
        [
            torch.isin(clusters, torch.nonzero(owned & (best == n)).flatten()).reshape(hw)
            for n in range(cross_attention.shape[0])
        ]
    )
    return ClusterAssignment(masks=masks, scores=scores, clusters=clusters.reshape(hw))


class AttentionMasks:
    """:class:`~aledit.masks.MaskProvider` from the editing model's own attention.

    Args:
        pipe: an :class:`~aledit.ALEEditPipeline` (any UNet the engine supports).
        n_clusters: V of DPL (5).
        threshold: TH of DPL (0.2).
        size: working resolution of the reconstruction (multiple of 8).
        steps: reconstruction steps.
        self_attention_scale: self-attention layer side as a fraction of the latent side (DPL:
            32 of 64 = 0.5); the nearest UNet level that has self-attention is used.
    """

    def __init__(
        self,
        pipe,
        n_clusters: int = 5,
        threshold: float = 0.2,
        size: int = 512,
        steps: int = 15,
        seed: int = 0,
        self_attention_scale: float = 0.5,
        progress: bool = False,
    ):
        self.pipe = pipe
        self.n_clusters = n_clusters
        self.threshold = threshold
        self.size = size
        self.steps = steps
        self.seed = seed
        self.self_attention_scale = self_attention_scale
        self.progress = progress

    def cache_key(self) -> dict:
        unet = self.pipe.unet.config
        return {
            "provider": "attention",
            "model": getattr(self.pipe, "name_or_path", None) or str(getattr(unet, "_name_or_path", "")),
            "n_clusters": self.n_clusters,
            "threshold": self.threshold,
            "size": self.size,
            "steps": self.steps,
            "seed": self.seed,
            "self_attention_scale": self.self_attention_scale,
        }

    def _self_attention_hw(self) -> tuple[int, int]:
        side = self.size // self.pipe.vae_scale_factor
        levels, s = [], side
        for _ in range(len(self.pipe.unet.config.down_block_types)):
            levels.append(s)
            s = -(-s // 2)
        goal = side * self.self_attention_scale
        best = min(levels, key=lambda level: (abs(level - goal), level))
        return best, best

    def record(self, image: Image.Image, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Reconstructs ``image`` and returns the mean self-attention ``[HW, HW]``, the objects'
        cross-attention maps ``[N, h, w]`` and ``hw``.

        Only the self-attention layers at ``hw`` and the cross-attention layers are recorded,
        each averaged into a running sum as it runs (peak memory: README, "CLI")."""
        prompt = join_phrases(phrases)
        layout = layout_prompt(self.pipe.tokenizer, prompt, phrases)
        hw = self._self_attention_hw()
        self_rec = SelfAttentionRecorder(hw)
        cross_rec = AttentionRecorder(layout.spans, hw)

        def processors(state):
            def choose(name, current):
                if is_self_attention(name):
                    return RecordingAttnProcessor(state, self_rec)
                if is_cross_attention(name):
                    return RecordingAttnProcessor(state, cross_rec)
                return current

            return choose

        self.pipe.reconstruct(
            image, prompt, processors, seed=self.seed, steps=self.steps, size=self.size, progress=self.progress
        )
        return self_rec.matrix(), cross_rec.maps(), hw

    def __call__(self, image: Image.Image, phrases: list[str]) -> dict[str, torch.Tensor]:
        self_attention, cross_attention, hw = self.record(image, phrases)
        result = masks_from_attention(self_attention, cross_attention, hw, self.n_clusters, self.threshold, self.seed)
        out = {}
        for n, phrase in enumerate(phrases):
            if not bool(result.masks[n].any()):
                best = float(result.scores[n].max())
                raise ObjectNotFoundError(
                    f"could not find {phrase!r} in the image from the model's attention (best cluster agreement "
                    f"{best:.3f}, threshold {self.threshold}); lower the threshold, name the object differently, "
                    "or give a mask",
                    phrase,
                    best,
                )
            out[phrase] = resize_nearest(result.masks[n], (image.height, image.width))
        logger.info("attention masks: agreement scores %s", result.scores.tolist())
        return out
