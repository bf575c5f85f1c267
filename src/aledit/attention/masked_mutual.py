"""MasaCtrl's mask-guided mutual self-attention: object and background borrowed separately.

Plain mutual self-attention (:class:`~.mutual_self.MutualSelfAttentionProcessor` with
``borrow=("key", "value")``) lets every target query look at every source position, so an
object's queries can pick up background content and the other way round (the paper's "query
confusion", Sec. 3.3). With a foreground mask ``M_s`` of the source image and ``M_t`` of the
target, each target row ``r`` with source partner ``s`` computes, at a layer of ``h x w`` cells::

    O_fg = softmax(Q_r K_s^T * scale + log M_s) V_s      # object keys only
    O_bg = softmax(Q_r K_s^T * scale + log(1 - M_s)) V_s  # background keys only
    O_r  = M_t * O_fg + (1 - M_t) * O_bg                 # per query position

Which source keys the object queries read, and when, are parameters, so CPAM's preservation
adaptation (Vo et al., Eqs. 1-3; :mod:`aledit.methods.cpam`) is this same operation:

* ``object_keys="source"`` (MasaCtrl): ``O_fg`` over the source keys inside ``M_s``;
  ``"target"`` (CPAM's object retention, Eq. 2): inside ``M_t``; ``"background"`` (CPAM's
  removal): outside ``M_s``, so every query reads only the source background;
* ``object_window``: the steps in which object queries borrow at all; outside it they keep the
  target's own self-attention, ``O_fg = softmax(Q_r K_r^T) V_r`` (CPAM before step ``T`` or
  below layer ``L``, or without retention), while background queries still read ``O_bg``.

The masks come from a provider with ``at(hw) -> (M_s, M_t)`` flattened, or ``None`` (then the
layer does plain mutual self-attention):

* :class:`GivenMasks`: user masks, any-pooled to each layer's resolution (a cell is object when
  any pixel it covers is), as everywhere in aledit; the reference code resizes with nearest.
* :class:`CrossAttentionMasks`: MasaCtrl's automatic masks (``MutualSelfAttentionControlMaskAuto``):
  the current step's cross-attention of the object words at the 16x16 level (at 512 px; a
  :class:`~.step_maps.StepMaps` fed by the cross-attention layers), summed over the words,
  min-max normalised, resized to the layer (nearest) and thresholded at 0.1; the source's map
  from the source row, the target's from the target row.

Source rows are left as plain self-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks.ops import downsample_any, resize_nearest
from .base import EditAttnProcessor
from .state import SOURCE, TARGET, EditState

__all__ = [
    "OBJECT_KEYS",
    "CrossAttentionMasks",
    "GivenMasks",
    "MaskedMutualSelfAttentionProcessor",
    "attention_foreground",
    "region_attention",
]


# Which source keys a target object query reads (MaskedMutualSelfAttentionProcessor.object_keys).
OBJECT_KEYS = ("source", "target", "background")


def region_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention restricted to the keys where ``key_mask`` is True.

    Args:
        query: ``[heads, Lq, d]``.
        key, value: ``[heads, Lk, d]``.
        key_mask: ``[Lk]`` bool. When it selects no key (or every key) the attention is plain:
            a region absent at a layer's resolution cannot be attended to on its own.
        scale: the logit scale.
        bias: optional additive logits ``[heads, Lq, Lk]`` (the layer's attention mask).

    Returns:
        ``[heads, Lq, d]``.
    """
    logits_bias = torch.zeros(key_mask.shape[0], dtype=query.dtype, device=query.device)
    if bool(key_mask.any()) and not bool(key_mask.all()):
        logits_bias = logits_bias.masked_fill(~key_mask.to(query.device), float("-inf"))
    full = logits_bias[None, None, :]
    if bias is not None:
        full = full + bias
    return F.scaled_dot_product_attention(query, key, value, attn_mask=full, scale=scale)


def attention_foreground(maps: torch.Tensor, hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """MasaCtrl's mask from cross-attention maps; pure.

    Args:
        maps: ``[n_tokens, h', w']`` maps of the object words.
        hw: the layer's ``(h, w)``.
        threshold: on the min-max normalised sum (reference 0.1).

    Returns:
        ``[h * w]`` bool, True = object.
    """
    total = maps.float().sum(dim=0)
    low, high = total.min(), total.max()
    normalised = (total - low) / (high - low).clamp_min(1e-12)
    # thresholding before a nearest resize equals the reference's resize-then-threshold
    return resize_nearest(normalised >= threshold, hw).flatten()


class GivenMasks:
    """Foreground masks given by the user.

    Args:
        source: ``[H, W]`` bool foreground of the source image, any resolution.
        target: ``[H, W]`` bool foreground of the target image; ``None`` = ``source`` (given
            masks describe the source image; an edit that moves the object changes where its
            target queries are, which a fixed mask cannot follow).
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor | None = None):
        if source.ndim != 2 or (target is not None and target.ndim != 2):
            raise ValueError("the source and target masks must be [H, W] bool masks")
        self.source = source.bool()
        self.target = self.source if target is None else target.bool()
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def at(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source and target foreground at ``hw``, ``[h * w]`` bool each."""
        hw = tuple(hw)
        if hw not in self._cache:
            self._cache[hw] = (downsample_any(self.source, hw).flatten(), downsample_any(self.target, hw).flatten())
        return self._cache[hw]


class CrossAttentionMasks:
    """MasaCtrl's automatic masks from the current step's cross-attention of the object words.

    Args:
        store: a :class:`~.step_maps.StepMaps` (``accumulate=False``) holding the object words'
            maps on the source and target conditional rows.
        threshold: on the min-max normalised maps (reference ``thres=0.1``).
    """

    def __init__(self, store, threshold: float = 0.1):
        self.store = store
        self.threshold = threshold

    def at(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Source and target foreground at ``hw``, or ``None`` before any map of the step."""
        source, target = self.store.maps(SOURCE), self.store.maps(TARGET)
        if source is None or target is None:
            return None
        return attention_foreground(source, hw, self.threshold), attention_foreground(target, hw, self.threshold)


class MaskedMutualSelfAttentionProcessor(EditAttnProcessor):
    """Mutual self-attention (target queries, source keys and values) split by foreground masks.

    Install it only on the layers that should borrow (MasaCtrl: the decoder's two
    highest-resolution levels); cross-attention passes through unchanged.

    Args:
        state: the call's shared state (layout and step).
        window: when to act, an object with ``active(step, num_steps)`` (:mod:`.schedule`);
            outside it the layer is plain self-attention.
        masks: :class:`GivenMasks`, :class:`CrossAttentionMasks` or any object with
            ``at(hw) -> (M_s, M_t) | None`` (``[h * w]`` bool each).
        object_keys: which source keys the object queries (inside ``M_t``) read: ``"source"``
            (inside ``M_s``, MasaCtrl), ``"target"`` (inside ``M_t``, CPAM's retention) or
            ``"background"`` (outside ``M_s``, CPAM's removal).
        object_window: when object queries borrow (``None``: whenever ``window`` is active);
            in active steps outside it they keep the target's own self-attention.
    """

    def __init__(self, state: EditState, window, masks, object_keys: str = "source", object_window=None):
        if object_keys not in OBJECT_KEYS:
            raise ValueError(f"object_keys must be one of {OBJECT_KEYS}, got {object_keys!r}")
        self.state = state
        self.window = window
        self.masks = masks
        self.object_keys = object_keys
        self.object_window = object_window

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        plain = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        if is_cross or not self.window.active(self.state.step, self.state.num_steps):
            return plain
        layout = self.state.layout
        found = self.masks.at(self.state.layer_hw(query.shape[2]))
        window = self.object_window
        borrow_object = window is None or window.active(self.state.step, self.state.num_steps)
        out = plain.clone()
        for row in layout.rows_of(TARGET):
            src = layout.source_partner(row)
            bias = attention_mask[row] if attention_mask is not None else None
            q, k, v = query[row], key[src], value[src]
            if found is None:  # no mask yet: plain mutual self-attention
                out[row] = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
                continue
            source_fg, target_fg = found
            bg = region_attention(q, k, v, ~source_fg, attn.scale, bias)
            if not borrow_object:
                fg = plain[row]
            elif self.object_keys == "background":
                fg = bg
            else:
                fg = region_attention(q, k, v, source_fg if self.object_keys == "source" else target_fg, attn.scale, bias)
            out[row] = torch.where(target_fg.to(q.device)[None, :, None], fg, bg)
        return out
