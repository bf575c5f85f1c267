"""Region-Guided Blending for Cross-Attention Masking (RGB-CAM, paper Algorithm 2, Eq. 3).

For the target branch's text-conditioned row:

* queries come from the target latent, keys from the *unmodified* base embedding ``e_base``
  (the row's own text embedding, as the sampler feeds it);
* the logits of object i's tokens get ``masked_logit`` (-100) outside object i's mask
  (``associate_masks`` of appendix C), so ``M_base`` = softmax of the masked logits;
* ``A_base = M_base V(e'_base)`` and ``A_Oi = M_base V(e'_Oi)``;
* ``A = A_base`` on the background and where objects overlap, ``A_Oi`` where only object i is.

Classifier-free guidance: the unconditional rows see the empty prompt, which has no object
tokens, so they are left as plain attention; masking and ORE act on the conditional target row
only, and the guided noise ``e_u + g (e_c - e_u)`` carries them. Source rows are never touched.
Masks are pooled to every layer's resolution (a cell belongs to an object when any pixel does);
``mask_resize="nearest"`` resizes them as the ALE authors' code does (floor-nearest, so a thin
object can vanish at a coarse layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks.ops import MASK_RESIZES, exclusive_regions, resize_masks
from .base import EditAttnProcessor, split_heads
from .recorder import AttentionRecorder
from .state import TARGET, EditState

__all__ = ["RegionGuidance", "RegionGuidedCrossAttentionProcessor"]


@dataclass(frozen=True)
class RegionGuidance:
    """The inputs of RGB-CAM for one edit.

    Attributes:
        object_masks: ``[N, H, W]`` bool masks of the edited objects (any resolution).
        spans: token span ``(start, stop)`` of each object in the target base prompt.
        value_embeddings: ``[N + 1, T, D]``: ``e'_base`` then ``e'_O1 .. e'_ON`` (ORE). Without
            ORE pass ``e_base`` N + 1 times: blending is then the identity and only masking acts.
        masked_logit: added to an object token's logit outside its mask (reference: -100).
        mask_resize: how masks reach a layer's resolution: ``"any-pool"`` or ``"nearest"`` (the
            authors' code), see :func:`~aledit.masks.ops.resize_masks`.
    """

    object_masks: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    value_embeddings: torch.Tensor
    masked_logit: float = -100.0
    mask_resize: str = "any-pool"

    def __post_init__(self):
        if self.mask_resize not in MASK_RESIZES:
            raise ValueError(f"mask_resize must be one of {', '.join(MASK_RESIZES)}, got {self.mask_resize!r}")
        n = self.object_masks.shape[0]
        if len(self.spans) != n or self.value_embeddings.shape[0] != n + 1:
            raise ValueError(
                f"{n} masks need {n} spans and {n + 1} value embeddings, got "
                f"{len(self.spans)} and {self.value_embeddings.shape[0]}"
            )

    def layer_masks(self, hw: tuple[int, int]) -> torch.Tensor:
        """``[N, h, w]`` bool: the object masks at a layer's resolution."""
        return resize_masks(self.object_masks, hw, self.mask_resize)

    def logit_bias(self, hw: tuple[int, int], tokens: int) -> torch.Tensor:
        """``[h*w, T]``: ``masked_logit`` where token t belongs to object i and the cell is
        outside mask i, 0 elsewhere."""
        masks = self.layer_masks(hw).flatten(1)  # [N, HW]
        bias = torch.zeros(masks.shape[1], tokens)
        for (start, stop), mask in zip(self.spans, masks):
            bias[:, start:stop] = torch.where(mask, 0.0, self.masked_logit)[:, None]
        return bias

    def blend_weights(self, hw: tuple[int, int]) -> torch.Tensor:
        """``[N + 1, h*w]`` one-hot region of each cell: base (background and overlaps), then
        object i's exclusive region (Eq. 3)."""
        objects, base = exclusive_regions(self.layer_masks(hw))
        return torch.cat([base[None], objects]).flatten(1).float()


class RegionGuidedCrossAttentionProcessor(EditAttnProcessor):
    """Cross-attention with RGB-CAM on the target's conditional row, and optional recording.

    Args:
        state: the call's shared state.
        guidance: RGB-CAM inputs; ``None`` gives plain cross-attention (recording only).
        recorder: collects the target row's attention maps per object, if given.
    """

    def __init__(
        self,
        state: EditState,
        guidance: RegionGuidance | None = None,
        recorder: AttentionRecorder | None = None,
    ):
        self.state = state
        self.guidance = guidance
        self.recorder = recorder
        self._per_layer: dict = {}  # resolution -> (bias, weights); one layer, constant per call
        self._values: torch.Tensor | None = None

    def _layer_inputs(self, hw, tokens, like: torch.Tensor):
        if hw not in self._per_layer:
            g = self.guidance
            self._per_layer[hw] = (
                g.logit_bias(hw, tokens).to(like.device, like.dtype),
                g.blend_weights(hw).to(like.device, like.dtype),
            )
        return self._per_layer[hw]

    def _value_heads(self, attn) -> torch.Tensor:
        """``[N + 1, heads, T, d]`` values of ``e'_base`` and each ``e'_Oi``."""
        if self._values is None:
            embeds = self.guidance.value_embeddings.to(attn.to_v.weight.device, attn.to_v.weight.dtype)
            if attn.norm_cross:
                embeds = attn.norm_encoder_hidden_states(embeds)
            self._values = split_heads(attn.to_v(embeds), attn.heads)
        return self._values

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        if not is_cross or (self.guidance is None and self.recorder is None):
            return out
        row = self.state.layout.index(TARGET, True)
        hw = self.state.layer_hw(query.shape[2])
        logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale  # [heads, HW, T]
        if attention_mask is not None:
            logits = logits + attention_mask[row]
        if self.guidance is not None:
            bias, weights = self._layer_inputs(hw, key.shape[2], logits)
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        if self.recorder is not None:
            self.recorder.add(probs, hw)
        if self.guidance is None:
            return out
        outputs = torch.matmul(probs[None], self._value_heads(attn))  # [N+1, heads, HW, d]
        blended = (outputs * weights[:, None, :, None]).sum(dim=0)
        out = out.clone()
        out[row] = blended
        return out
