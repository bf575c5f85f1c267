"""Grounding losses for training ``synthetic-tiny``: an object's words should attend inside the
object's exact mask (token level) and the object's pixels should attend to its words (pixel
level), in the manner of TokenCompose (Wang et al., CVPR 2024), which adds both terms to Stable
Diffusion's denoising loss using segmentation masks. The synthetic world gives exact masks.

Notation, for one cross-attention layer (head-mean probabilities ``A [B, HW, T]``, each row a
distribution over the ``T`` tokens), object ``k`` of sample ``b`` with token set ``S_k``
(``token_masks [B, K, T]``, 0/1) and region ``R_k`` (``region_masks [B, K, HW]``, the share of
each attention cell covered by the object, in ``[0, 1]``):

* word map ``a_k(p) = sum_{t in S_k} A[p, t]`` (the phrase's attention at pixel ``p``);
* token term (TokenCompose's ``L_token``)::

      share_k = sum_p a_k(p) R_k(p) / sum_p a_k(p)         (the phrase's mass inside its mask)
      L_token = mean_k (1 - share_k)^2

  It moves a phrase's attention into its mask but says nothing about how much attention the
  phrase gets: alone it lets EOS / padding take nearly all the mass (issue 15's probe: word
  share 1.7%).
* pixel term (TokenCompose's ``L_pixel``, a binary cross-entropy between the word map and the
  mask; here the word map itself is the probability, not a rescaled map)::

      L_pixel = mean_k [ BCE inside R_k + BCE outside R_k ] / 2
      BCE inside  = sum_p R_k(p) (-log a_k(p))       / sum_p R_k(p)
      BCE outside = sum_p (1 - R_k(p)) (-log(1 - a_k(p))) / sum_p (1 - R_k(p))

  The inside half makes the object's pixels give their attention to the object's words (off
  EOS); the outside half keeps other pixels off them. Its gradient does not vanish when
  ``a_k(p)`` is near 0 (unlike a squared error through the softmax), so it lifts the words out
  of the EOS sink.
* separation term (ours): the outside half restricted to the *other named objects'* pixels::

      O_k(p) = max_{j != k, valid} R_j(p)
      L_sep  = mean_k sum_p O_k(p) (-log(1 - a_k(p))) / sum_p O_k(p)

  In the pixel term the outside half is dominated by background pixels, so a phrase is pushed
  off the background but hardly off the other objects (measured: words learn *where objects
  are*, not *which*); this term asks only the latter.

Objects that a caption leaves out, and empty captions, have ``valid`` False and add nothing.
Every function here is pure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

__all__ = [
    "CrossAttentionRecorder",
    "phrase_inside_share",
    "pixel_grounding_loss",
    "region_masks_at",
    "separation_grounding_loss",
    "token_grounding_loss",
    "word_maps",
]

EPS = 1e-6


def word_maps(probs: torch.Tensor, token_masks: torch.Tensor) -> torch.Tensor:
    """Attention each pixel gives to each object's tokens.

    Args:
        probs: ``[B, HW, T]`` cross-attention probabilities (mean over heads).
        token_masks: ``[B, K, T]`` 1 where token ``t`` belongs to object ``k``'s phrase.

    Returns:
        ``[B, K, HW]`` word maps ``a_k(p)``, each in ``[0, 1]``.
    """
    return torch.einsum("bpt,bkt->bkp", probs, token_masks.to(probs.dtype))


def phrase_inside_share(probs: torch.Tensor, token_masks: torch.Tensor, region_masks: torch.Tensor) -> torch.Tensor:
    """Share of each phrase's attention that lies inside its region.

    Args:
        probs: ``[B, HW, T]``; token_masks: ``[B, K, T]``; region_masks: ``[B, K, HW]`` in ``[0, 1]``.

    Returns:
        ``[B, K]`` ``sum_p a_k(p) R_k(p) / sum_p a_k(p)`` (0 where the phrase gets no attention).
    """
    a = word_maps(probs, token_masks)
    return (a * region_masks).sum(-1) / a.sum(-1).clamp_min(EPS)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def token_grounding_loss(
    probs: torch.Tensor, token_masks: torch.Tensor, region_masks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``mean over valid (b, k) of (1 - share_k)^2`` (see the module docstring).

    Args:
        probs: ``[B, HW, T]``; token_masks: ``[B, K, T]``; region_masks: ``[B, K, HW]``;
        valid: ``[B, K]`` bool, the objects the caption names.

    Returns:
        a 0-d tensor; 0 when no object is valid.
    """
    share = phrase_inside_share(probs, token_masks, region_masks)
    return _masked_mean((1.0 - share).pow(2), valid)


def pixel_grounding_loss(
    probs: torch.Tensor, token_masks: torch.Tensor, region_masks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean over valid ``(b, k)`` of the inside and outside binary cross-entropies of the word
    map against the region (see the module docstring).

    Args:
        probs: ``[B, HW, T]``; token_masks: ``[B, K, T]``; region_masks: ``[B, K, HW]``;
        valid: ``[B, K]`` bool.

    Returns:
        a 0-d tensor; 0 when no object is valid.
    """
    a = word_maps(probs, token_masks).clamp(EPS, 1.0 - EPS)
    r = region_masks.to(a.dtype)
    inside = (r * -torch.log(a)).sum(-1) / r.sum(-1).clamp_min(EPS)
    outside = ((1 - r) * -torch.log1p(-a)).sum(-1) / (1 - r).sum(-1).clamp_min(EPS)
    has_inside = r.sum(-1) > 0
    return _masked_mean((inside + outside) / 2, valid & has_inside)


def separation_grounding_loss(
    probs: torch.Tensor, token_masks: torch.Tensor, region_masks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean over valid ``(b, k)`` that have another valid object of the binary cross-entropy
    ``-log(1 - a_k)`` over the other objects' pixels (``L_sep`` of the module docstring).

    Args:
        probs: ``[B, HW, T]``; token_masks: ``[B, K, T]``; region_masks: ``[B, K, HW]``;
        valid: ``[B, K]`` bool.

    Returns:
        a 0-d tensor; 0 when no sample names two objects.
    """
    a = word_maps(probs, token_masks).clamp(EPS, 1.0 - EPS)
    r = region_masks.to(a.dtype) * valid[..., None].to(a.dtype)
    k = r.shape[1]
    others = torch.stack(
        [torch.stack([r[:, j] for j in range(k) if j != i], 1).amax(1) if k > 1 else torch.zeros_like(r[:, i]) for i in range(k)], 1
    )  # [B, K, HW]
    weight = others.sum(-1)
    loss = (others * -torch.log1p(-a)).sum(-1) / weight.clamp_min(EPS)
    return _masked_mean(loss, valid & (weight > 0))


def region_masks_at(masks: np.ndarray, side: int) -> torch.Tensor:
    """Object masks at an attention layer's resolution.

    Args:
        masks: ``bool [..., H, W]`` pixel masks.
        side: the layer's side (``HW = side^2``).

    Returns:
        ``float [..., side * side]``: the share of each cell the object covers (area pooling).
    """
    m = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    lead = m.shape[:-2]
    pooled = F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=(side, side), mode="area")
    return pooled.reshape(*lead, side * side)


class CrossAttentionRecorder:
    """Attention processor (diffusers' ``AttnProcessor`` computation) that also keeps the
    head-mean cross-attention probabilities it computed, with their autograd graph, in
    ``self.maps`` (one ``[B, HW, T]`` tensor per call). Install it on the cross-attention
    layers only (``unet.set_attn_processor({name: ...})``); self-attention layers keep theirs.

    Only the transformer-block layout of ``UNet2DConditionModel`` is supported (3-d hidden
    states, no group norm, no spatial norm, no residual connection inside the layer).
    """

    def __init__(self, keep: bool = True):
        self.keep = keep
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("CrossAttentionRecorder supports the transformer blocks' 3-d attention layers only")
        if encoder_hidden_states is None:
            raise ValueError("CrossAttentionRecorder is for cross-attention layers; install it on attn2 only")
        batch = hidden_states.shape[0]
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [B * heads, HW, T]
        if self.keep:
            self.maps.append(probs.reshape(batch, attn.heads, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
