"""BindEdit's attention processors: cross-attention re-balancing and map recording for guidance.

* :class:`BindingCrossAttentionProcessor`: on the target's conditional row, re-balances the new
  target tokens inside their regions (:func:`aledit.binding.rebalance_bias`) while its window is
  active, and, while a :class:`BindingMaps` is recording, keeps that row's object maps
  ``[K, HW]`` *with their autograd graph* (the attention-binding guidance differentiates them).
* :class:`BindingSelfAttentionProcessor`: InfEdit / ALE mutual self-attention, plus recording
  of the target's conditional row's *own* self-attention map ``softmax(Q_t K_t^T)`` (even
  where the output borrows the source's queries and keys: the energy is about the target's
  attention, and it is the only one with a gradient to the target latent).

Recording happens only in layers whose side is at most ``max_side_ratio`` of the latent's side
(coarse layers: a ``[HW, HW]`` map with its graph is large). Unconditional and source rows are
never changed. With no re-balancing and no recording both processors compute exactly what
:class:`~.region_cross.RegionGuidedCrossAttentionProcessor` (without guidance) and
:class:`~.mutual_self.MutualSelfAttentionProcessor` compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..binding import object_maps, rebalance_bias
from ..masks.ops import downsample_any
from .base import EditAttnProcessor
from .mutual_self import MutualSelfAttentionProcessor
from .recorder import AttentionRecorder
from .state import TARGET, EditState

__all__ = [
    "BindingCrossAttentionProcessor",
    "BindingMaps",
    "BindingSelfAttentionProcessor",
    "RegionRebalance",
    "token_sets_of",
]


@dataclass(frozen=True)
class RegionRebalance:
    """Re-balancing inputs: probability scale ``scale`` for ``token_sets[k]`` inside
    ``object_masks[k]`` (``[K, H, W]`` bool, any resolution), while ``window`` is active."""

    object_masks: torch.Tensor
    token_sets: tuple[tuple[int, ...], ...]
    scale: float
    window: object

    def bias(self, hw: tuple[int, int], tokens: int) -> torch.Tensor:
        """``[h*w, T]`` logit bias at a layer of resolution ``hw``."""
        regions = downsample_any(self.object_masks, hw).flatten(1)
        return rebalance_bias(regions, self.token_sets, self.scale, tokens)


@dataclass
class BindingMaps:
    """Maps of the target's conditional row kept with their graph during a guidance pass.

    The guidance sets ``recording`` for one UNet call; the processors append to ``cross``
    (``(hw, [K, h*w])`` object maps) and ``self_maps`` (``(hw, [h*w, h*w])`` head-averaged
    self-attention) in layers with ``h <= max_side_ratio * latent_h``.

    Attributes:
        object_masks: ``[K, H, W]`` bool.
        token_sets: per object, the target-prompt token positions of its target phrase.
        latent_hw: ``(h, w)`` of the latent.
        max_side_ratio: largest layer side recorded, as a ratio of the latent's side.
        record_cross, record_self: which maps to keep.
    """

    object_masks: torch.Tensor
    token_sets: tuple[tuple[int, ...], ...]
    latent_hw: tuple[int, int]
    max_side_ratio: float = 0.5
    record_cross: bool = True
    record_self: bool = True
    recording: bool = False
    cross: list = field(default_factory=list)
    self_maps: list = field(default_factory=list)
    _regions: dict = field(default_factory=dict)

    def wants(self, hw: tuple[int, int]) -> bool:
        return self.recording and hw[0] <= self.max_side_ratio * self.latent_hw[0] + 1e-9

    def regions(self, hw: tuple[int, int]) -> torch.Tensor:
        """``[K, h*w]`` bool regions at a layer's resolution (cached)."""
        if hw not in self._regions:
            self._regions[hw] = downsample_any(self.object_masks, hw).flatten(1)
        return self._regions[hw]

    def start(self) -> None:
        self.cross, self.self_maps, self.recording = [], [], True

    def stop(self) -> tuple[list, list]:
        self.recording = False
        out = (self.cross, self.self_maps)
        self.cross, self.self_maps = [], []
        return out


class BindingCrossAttentionProcessor(EditAttnProcessor):
    """Cross-attention with re-balancing and guidance recording on the target's conditional row.

    Args:
        state: the call's shared state.
        rebalance: re-balancing inputs, or ``None``.
        maps: the guidance's recorder, or ``None``.
        recorder: the pipeline's attention recorder (``return_attention``), fed outside
            guidance passes with the same (re-balanced) maps.
    """

    def __init__(
        self,
        state: EditState,
        rebalance: RegionRebalance | None = None,
        maps: BindingMaps | None = None,
        recorder: AttentionRecorder | None = None,
    ):
        self.state = state
        self.rebalance = rebalance
        self.maps = maps
        self.recorder = recorder
        self._bias: dict = {}

    def _rebalancing(self) -> bool:
        r = self.rebalance
        return r is not None and r.window.active(self.state.step, self.state.num_steps)

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        if not is_cross:
            return out
        hw = self.state.layer_hw(query.shape[2])
        rebalancing = self._rebalancing()
        guiding = self.maps is not None and self.maps.recording
        recording = guiding and self.maps.record_cross and self.maps.wants(hw)
        showing = self.recorder is not None and not guiding
        if not (rebalancing or recording or showing):
            return out
        row = self.state.layout.index(TARGET, True)
        logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale  # [heads, HW, T]
        if attention_mask is not None:
            logits = logits + attention_mask[row]
        if rebalancing:
            if hw not in self._bias:
                self._bias[hw] = self.rebalance.bias(hw, key.shape[2]).to(logits.device, logits.dtype)
            logits = logits + self._bias[hw]
        probs = logits.softmax(dim=-1)
        if recording:
            self.maps.cross.append((hw, object_maps(probs, self.maps.token_sets)))
        if showing:
            self.recorder.add(probs.detach(), hw)
        if not rebalancing:
            return out
        rows = [out[i] for i in range(out.shape[0])]  # no in-place write: the graph may need `out`
        rows[row] = torch.matmul(probs, value[row])
        return torch.stack(rows)


class BindingSelfAttentionProcessor(MutualSelfAttentionProcessor):
    """Mutual self-attention (queries and keys, InfEdit / ALE) that also records the target's
    conditional row's own self-attention map for the guidance.

    Args:
        state, self_replace: as :class:`~.mutual_self.MutualSelfAttentionProcessor`.
        maps: the guidance's recorder, or ``None``.
    """

    def __init__(self, state: EditState, self_replace, maps: BindingMaps | None = None):
        super().__init__(state, self_replace)
        self.maps = maps

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        maps = self.maps
        if maps is not None and maps.record_self and not is_cross:
            hw = self.state.layer_hw(query.shape[2])
            if maps.wants(hw):
                row = self.state.layout.index(TARGET, True)
                logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale  # [heads, HW, HW]
                maps.self_maps.append((hw, logits.softmax(dim=-1).mean(dim=0)))
        return super().attend(attn, query, key, value, attention_mask, is_cross)


def token_sets_of(spans: Sequence[tuple[int, int]]) -> tuple[tuple[int, ...], ...]:
    """Token positions of each ``(start, stop)`` span."""
    return tuple(tuple(range(start, stop)) for start, stop in spans)
