"""Local blending (Prompt-to-Prompt's ``LocalBlend``, InfEdit's dual-threshold variant).

After a step, the target latent keeps its own values only inside an edit region and takes the
source's elsewhere::

    x_t = where(mask, x_t, x_s)          (P2P writes x_s + mask * (x_t - x_s); same for a 0/1 mask)

The target's x0 estimate, which is what gets decoded, is blended with the source's the same way.

The region comes from the cross-attention maps of the blend words (:class:`~aledit.attention.
step_maps.StepMaps`), each turned into a mask by :func:`word_mask`: combine the words' tokens
(mean; InfEdit: max), optionally 3x3 max-pool (stride 1, padding 1; P2P), upsample to the latent
size (nearest), divide by the maximum, threshold (``> threshold``). Then:

* P2P (``source_role="edit"``): mask = source words' mask OR target words' mask (threshold 0.3
  for both), from step ``int(start_blend * N)`` on (0.2).
* InfEdit (``source_role="preserve"``): ``m_tgt`` from the target words with threshold
  ``max(temperature / sqrt(alpha_t), threshold)`` (``alpha_t``: ``alphas_cumprod`` at the step's
  timestep, so early noisy steps have an empty mask), ``m_src`` from the source words to
  *preserve* with ``source_threshold``; mask = ``m_tgt AND NOT m_src``. This is the paper's
  ``(1 - m_tgt + m_src) z_src + (m_tgt - m_src) z_tgt`` except where ``m_src`` is set outside
  ``m_tgt``: there the paper's weights (2, -1) are no blend, and the code's ``torch.where``
  chain gives the source, as here. Without target words ``m_tgt`` is everything (the code's
  ``alpha_e.sum() == 0`` case).

Given masks (user masks at latent resolution) replace the attention-derived mask. The last mask
used is written to ``extras["blend_mask"]`` (``[h, w]`` bool, CPU) for the user to see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention.schedule import StepWindow
from ..attention.state import SOURCE, TARGET, EditState
from ..samplers.base import BranchLatents
from ..validation import check_number

__all__ = ["BlendRule", "LocalBlend", "word_mask"]

_ROLES = ("edit", "preserve")
_REDUCE = ("mean", "max")


def word_mask(
    maps: torch.Tensor, size: tuple[int, int], threshold: float, pool: bool = True, reduce: str = "mean"
) -> torch.Tensor:
    """Thresholded attention region of some words; pure.

    Args:
        maps: ``[n_tokens, h, w]`` cross-attention maps of the words' tokens.
        size: ``(H, W)`` of the latent.
        threshold: a cell is in the mask when its normalised value is ``> threshold``.
        pool: 3x3 max-pool (stride 1, padding 1) before upsampling (P2P).
        reduce: ``"mean"`` or ``"max"`` over the tokens.

    Returns:
        ``[H, W]`` bool.
    """
    m = maps.float().mean(dim=0) if reduce == "mean" else maps.float().amax(dim=0)
    m = m[None, None]
    if pool:
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
    m = F.interpolate(m, size=tuple(size), mode="nearest")
    # an all-zero map gives an empty mask (P2P's 0/0 = NaN compares False)
    m = m / m.amax().clamp_min(torch.finfo(m.dtype).tiny)
    return (m > threshold)[0, 0]


@dataclass(frozen=True)
class BlendRule:
    """How a :class:`LocalBlend` turns word maps into the region the target keeps.

    Attributes:
        threshold: threshold of the target words' mask (P2P 0.3 for both; InfEdit ``thresh_e``).
        source_threshold: threshold of the source words' mask (``None``: ``threshold``;
            InfEdit ``thresh_m``).
        source_role: ``"edit"``: the source words' region is edited too (P2P, union);
            ``"preserve"``: it is kept from the source (InfEdit's "mutual" words).
        pool: 3x3 max-pool before upsampling (P2P yes, InfEdit no).
        reduce: combine a words' tokens by ``"mean"`` (P2P sums; the same after normalising)
            or ``"max"`` (InfEdit).
        temperature: InfEdit's target threshold is ``max(temperature / sqrt(alpha_t),
            threshold)``; 0 keeps ``threshold`` (P2P).
    """

    threshold: float = 0.3
    source_threshold: float | None = None
    source_role: str = "edit"
    pool: bool = True
    reduce: str = "mean"
    temperature: float = 0.0

    def __post_init__(self):
        check_number("blend threshold", self.threshold, 0.0, 1.0)
        if self.source_threshold is not None:
            check_number("source blend threshold", self.source_threshold, 0.0, 1.0)
        check_number("blend temperature", self.temperature, 0.0)
        if self.source_role not in _ROLES:
            raise ValueError(f"source_role must be one of {_ROLES}, got {self.source_role!r}")
        if self.reduce not in _REDUCE:
            raise ValueError(f"reduce must be one of {_REDUCE}, got {self.reduce!r}")

    def target_threshold(self, alpha_t: float | None) -> float:
        if self.temperature <= 0 or alpha_t is None:
            return self.threshold
        return max(self.temperature / math.sqrt(alpha_t), self.threshold)


class LocalBlend:
    """Latent hook: the target keeps its own latents only inside the blend region.

    Args:
        state: the call's state (``num_steps`` for the window; ``alpha_t``, the noise level the
            sampler set for the step, when ``rule.temperature > 0``).
        maps: the stored word maps (source words on the source row, target words on the target
            row); unused when ``masks`` is given.
        rule: thresholds and how the two masks combine.
        window: steps at which the hook blends, ``active(step, num_steps)`` (P2P:
            ``StepWindow(0.2, 1.0)``).
        masks: ``[h, w]`` (or ``[N, h, w]``, united) bool user masks at latent resolution;
            replace the attention-derived mask.
        extras: a dict to write the last mask used into (``"blend_mask"``).
    """

    def __init__(
        self,
        state: EditState,
        maps=None,
        rule: BlendRule = BlendRule(),
        window=StepWindow(0.2, 1.0),
        masks: torch.Tensor | None = None,
        extras: dict | None = None,
    ):
        if maps is None and masks is None:
            raise ValueError("a local blend needs stored attention maps or given masks")
        if masks is not None:
            masks = masks.bool()
            masks = masks.any(dim=0) if masks.ndim == 3 else masks
        self.state = state
        self.maps = maps
        self.rule = rule
        self.window = window
        self.masks = masks
        self.extras = extras if extras is not None else {}

    def mask(self, step: int, size: tuple[int, int]) -> torch.Tensor | None:
        """``[H, W]`` bool region the target keeps at ``step``, or ``None`` (no maps yet)."""
        if self.masks is not None:
            if tuple(self.masks.shape) != tuple(size):
                raise ValueError(f"given blend masks are {tuple(self.masks.shape)}, the latent is {tuple(size)}")
            return self.masks
        rule = self.rule
        target_maps, source_maps = self.maps.maps(TARGET), self.maps.maps(SOURCE)
        if target_maps is None and source_maps is None:
            return None
        alpha_t = self.state.alpha_t if rule.temperature > 0 else None
        source_threshold = rule.threshold if rule.source_threshold is None else rule.source_threshold
        m_tgt = m_src = None
        if target_maps is not None:
            m_tgt = word_mask(target_maps, size, rule.target_threshold(alpha_t), rule.pool, rule.reduce)
        if source_maps is not None:
            m_src = word_mask(source_maps, size, source_threshold, rule.pool, rule.reduce)
        if rule.source_role == "edit":
            if m_tgt is None or m_src is None:
                return m_tgt if m_src is None else m_src
            return m_tgt | m_src
        keep = m_tgt if m_tgt is not None else torch.ones(tuple(size), dtype=torch.bool, device=m_src.device)
        return keep if m_src is None else keep & ~m_src

    def __call__(self, step: int, latents: BranchLatents) -> BranchLatents:
        if not self.window.active(step, self.state.num_steps):
            return latents
        keep = self.mask(step, tuple(latents.target.shape[-2:]))
        if keep is None:
            return latents
        self.extras["blend_mask"] = keep.detach().cpu()
        keep = keep.to(latents.target.device)[None, None]
        return latents.replace(
            target=torch.where(keep, latents.target, latents.source),
            target_x0=torch.where(keep, latents.target_x0, latents.source_x0),
        )
