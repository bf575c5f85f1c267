"""The losses of Dynamic Prompt Learning (Wang et al., NeurIPS 2023, section 3.2) as pure functions.

At every denoising step DPL learns the input token embeddings of the nouns so that each noun's
cross-attention map covers its own object. On the aggregated cross-attention of the conditional
source pass, ``A [HW, T]`` (mean over heads and the layers of one level, DPL: 16x16), with the
noun maps ``A_k [HW]`` (the mean of ``A`` over a noun's token positions) and the background map
``B [HW]`` (:mod:`aledit.masks.attention`, section 3.3):

* attention balancing (Attend-and-Excite's loss, Eq. 8)::

      L_at = max_k max(0, 1 - max F(S_k)),   S = softmax(100 * A[:, 1:-1]) over the tokens,

  ``F`` a 3x3 Gaussian filter on the ``h x w`` grid (reflect padding) and ``S_k`` the noun's
  columns of ``S`` (the text tokens without the start token and the last position);
* disjoint objects (Eq. 6): cosine similarity of every pair of noun maps;
* background leakage (Eq. 7): cosine similarity of every noun map with ``B``.

The paper sums Eqs. 6 and 7 (over ordered pairs and over nouns); the authors' code averages
(over unordered pairs and over nouns), and its thresholds are tuned for the averages
(``reduction="mean"``). With one noun only ``L_bg`` applies (the paper; the others are 0).

The thresholds decay exponentially with the denoising step index ``i`` (0 = the noisiest step):
``TH(i) = beta * exp(-i / alpha)`` (Eq. 10); a step's iterations stop once every loss is below
its threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DPLLosses",
    "attention_balance_loss",
    "background_loss",
    "decaying_threshold",
    "disjoint_loss",
    "dpl_losses",
    "gaussian_kernel",
    "noun_maps",
]

REDUCTIONS = ("mean", "sum")


def decaying_threshold(step: int, alpha: float, beta: float) -> float:
    """``beta * exp(-step / alpha)`` (Eq. 10), ``step`` the 0-based denoising step index."""
    return beta * math.exp(-step / alpha)


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """``[size, size]`` Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))`` normalised to sum 1.

    Attend-and-Excite's ``GaussianSmoothing`` (which the DPL code uses) writes the exponent as
    ``((x / (2 sigma))^2)``: its kernel is this one with ``sigma * sqrt(2)``.
    """
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum()).float()


def noun_maps(attention: torch.Tensor, spans: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Each noun's map: the mean of ``attention [HW, T]`` over its token span -> ``[K, HW]``."""
    return torch.stack([attention[:, a:b].mean(dim=1) for a, b in spans])


def attention_balance_loss(
    attention: torch.Tensor, spans: tuple[tuple[int, int], ...], hw: tuple[int, int], sigma: float = 0.5
) -> torch.Tensor:
    """``L_at = max_k max(0, 1 - max F(softmax(100 A[:, 1:-1])_k))`` (Eq. 8), a 0-d tensor.

    Args:
        attention: ``[HW, T]`` cross-attention of the conditional pass (rows sum to 1).
        spans: token ``(start, stop)`` of each noun in the prompt (positions of ``attention``'s
            columns; the start token is position 0).
        hw: ``(h, w)`` with ``h * w = HW``.
        sigma: the Gaussian filter's sigma (3x3 kernel).
    """
    text = torch.softmax(100 * attention[:, 1:-1], dim=-1)  # [HW, T - 2], column j = token j + 1
    kernel = gaussian_kernel(3, sigma).to(attention.device, attention.dtype)[None, None]
    losses = []
    for a, b in spans:
        m = text[:, a - 1 : b - 1].mean(dim=1).reshape(1, 1, *hw)
        smooth = F.conv2d(F.pad(m, (1, 1, 1, 1), mode="reflect"), kernel)
        losses.append((1 - smooth.max()).clamp_min(0))
    return torch.stack(losses).max()


def disjoint_loss(maps: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cosine similarity between the noun maps ``maps [K, HW]`` (Eq. 6), a 0-d tensor.

    ``"mean"``: over the ``K (K - 1) / 2`` unordered pairs (the code); ``"sum"``: over the
    ``K (K - 1)`` ordered pairs (Eq. 6). 0 for fewer than two nouns.
    """
    k = maps.shape[0]
    if k < 2:
        return maps.new_zeros(())
    cos = F.cosine_similarity(maps[:, None, :], maps[None, :, :], dim=-1)  # [K, K]
    i, j = torch.triu_indices(k, k, offset=1)
    pairs = cos[i, j]
    return pairs.mean() if reduction == "mean" else 2 * pairs.sum()


def background_loss(maps: torch.Tensor, background: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cosine similarity of each noun map ``maps [K, HW]`` with the background ``[HW]`` (Eq. 7),
    averaged (the code) or summed (Eq. 7) over the nouns; a 0-d tensor."""
    cos = F.cosine_similarity(maps, background.to(maps.dtype).reshape(1, -1).expand_as(maps), dim=-1)
    return cos.mean() if reduction == "mean" else cos.sum()


@dataclass(frozen=True)
class DPLLosses:
    """The three losses of one iteration (0-d tensors) and their weighted sum ``total``."""

    at: torch.Tensor
    dj: torch.Tensor
    bg: torch.Tensor
    total: torch.Tensor

    def below(self, thresholds: tuple[float, float, float]) -> bool:
        """Every loss strictly below its threshold (``(TH_at, TH_dj, TH_bg)``)."""
        return all(v.item() < th for v, th in zip((self.at.detach(), self.dj.detach(), self.bg.detach()), thresholds))


def dpl_losses(
    attention: torch.Tensor,
    spans: tuple[tuple[int, int], ...],
    hw: tuple[int, int],
    background: torch.Tensor | None,
    weights: tuple[float, float, float] = (1.0, 0.05, 0.05),
    reduction: str = "mean",
    sigma: float = 0.5,
) -> DPLLosses:
    """``L = w_at L_at + w_dj L_dj + w_bg L_bg`` (Eq. 9) on ``attention [HW, T]``.

    Args:
        attention: aggregated cross-attention ``[HW, T]`` of the conditional pass.
        spans: each noun's token ``(start, stop)``.
        hw: the map's ``(h, w)``.
        background: ``[HW]`` (or ``[h, w]``) background map in {0, 1}; ``None``: no ``L_bg``.
        weights: ``(w_at, w_dj, w_bg)`` (paper 1, 0.05, 0.05).
        reduction: ``"mean"`` (code) or ``"sum"`` (paper) for ``L_dj`` and ``L_bg``.
        sigma: sigma of ``L_at``'s Gaussian filter.
    """
    maps = noun_maps(attention, spans)
    zero = attention.new_zeros(())
    several = len(spans) >= 2  # with one noun only L_bg applies (section 3.2)
    at = attention_balance_loss(attention, spans, hw, sigma) if several else zero
    dj = disjoint_loss(maps, reduction) if several else zero
    bg = background_loss(maps, background.reshape(-1), reduction) if background is not None else zero
    total = weights[0] * at + weights[1] * dj + weights[2] * bg
    return DPLLosses(at=at, dj=dj, bg=bg, total=total)
