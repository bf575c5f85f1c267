"""Mutual self-attention control: the target branch borrows the source branch's attention.

InfEdit / Free-Prompt-Editing give the target rows the source's queries and keys (its own
values), which keeps the source's layout while the target's content changes; MasaCtrl borrows
keys and values instead. Which projections are borrowed is a parameter, so both methods use
this one processor. Borrowing lasts while ``(step + 1) / num_steps < self_replace``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import EditAttnProcessor
from .state import TARGET, EditState

__all__ = ["MutualSelfAttentionProcessor"]

_PROJECTIONS = ("query", "key", "value")


class MutualSelfAttentionProcessor(EditAttnProcessor):
    """Self-attention where target rows take the source's projections early in sampling.

    Args:
        state: the call's shared state (layout and step).
        self_replace: fraction of steps with borrowing (paper appendix D: 1.0 color, 0.5 object,
            0.6 material).
        borrow: which projections the target takes from the source.
        start_step: first step with borrowing (MasaCtrl starts late; InfEdit at 0).
    """

    def __init__(
        self,
        state: EditState,
        self_replace: float,
        borrow: tuple[str, ...] = ("query", "key"),
        start_step: int = 0,
    ):
        unknown = set(borrow) - set(_PROJECTIONS)
        if unknown:
            raise ValueError(f"cannot borrow {sorted(unknown)}; choose from {_PROJECTIONS}")
        self.state = state
        self.self_replace = float(self_replace)
        self.borrow = tuple(borrow)
        self.start_step = start_step

    def active(self) -> bool:
        step = self.state.step
        return step >= self.start_step and (step + 1) / self.state.num_steps < self.self_replace

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        if is_cross or not self.active():
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        layout = self.state.layout
        tensors = {"query": query, "key": key, "value": value}
        for name in self.borrow:
            t = tensors[name].clone()
            for row in layout.rows_of(TARGET):
                t[row] = tensors[name][layout.source_partner(row)]
            tensors[name] = t
        return F.scaled_dot_product_attention(
            tensors["query"], tensors["key"], tensors["value"], attn_mask=attention_mask, scale=attn.scale
        )
