"""Shared plumbing of aledit's attention processors.

A diffusers ``Attention`` module owns the projections; a processor computes the layer. Every
processor here does the same work around its core (spatial/group norm, reshaping, output
projection, residual) as ``AttnProcessor2_0`` and overrides only :meth:`EditAttnProcessor.attend`,
which gets the projected queries, keys and values split into heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["EditAttnProcessor", "split_heads", "merge_heads"]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, heads * d]`` -> ``[B, heads, L, d]``."""
    b, length, inner = x.shape
    return x.view(b, length, heads, inner // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, L, d]`` -> ``[B, L, heads * d]``."""
    b, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * d)


class EditAttnProcessor:
    """Base processor: standard attention with an overridable core.

    Subclasses implement :meth:`attend`; ``__call__`` has the signature diffusers expects.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, query_len, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        context_len = encoder_hidden_states.shape[1] if is_cross else query_len
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = split_heads(attn.to_q(hidden_states), attn.heads)
        key = split_heads(attn.to_k(encoder_hidden_states), attn.heads)
        value = split_heads(attn.to_v(encoder_hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self.attend(attn, query, key, value, attention_mask, is_cross=is_cross)
        out = merge_heads(out).to(query.dtype)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def attend(
        self,
        attn,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        is_cross: bool,
    ) -> torch.Tensor:
        """Core attention. ``query [B, heads, Lq, d]``, ``key/value [B, heads, Lk, d]`` ->
        ``[B, heads, Lq, d]``."""
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
