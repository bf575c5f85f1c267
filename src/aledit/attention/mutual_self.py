"""Mutual self-attention control: the target branch borrows the source branch's attention.

One processor serves four papers; which projections are borrowed, when, where and on which rows
are parameters:

* InfEdit / ALE: the target takes the source's queries and keys (its own values) while
  ``(step + 1) / N < self_replace``, on every target row, in every layer.
* Prompt-to-Prompt / FPE: the target's self-attention *probabilities* are replaced by the
  source's; ``softmax(Q K^T)`` depends only on Q and K, so this is borrowing queries and keys,
  in layers with at most ``32 * 32`` queries and on the conditional row only (P2P's controller
  edits the conditional half of the batch).
* MasaCtrl: the target's queries attend to the source's keys and values, from step 4 in the
  decoder's 32x32 and 64x64 layers (chosen by layer name when installing), each guidance half
  with its own source half.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import EditAttnProcessor
from .schedule import LeadingFraction
from .state import TARGET, EditState

__all__ = ["MutualSelfAttentionProcessor"]

_PROJECTIONS = ("query", "key", "value")
_ROWS = ("all", "conditional")


class MutualSelfAttentionProcessor(EditAttnProcessor):
    """Self-attention where target rows take the source's projections while a window is active.

    Args:
        state: the call's shared state (layout and step).
        self_replace: a window with ``active(step, num_steps)`` (:mod:`.schedule`), or a float
            ``f`` meaning :class:`~.schedule.LeadingFraction` ``(f)`` (ALE appendix D: 1.0 color,
            0.5 object, 0.6 material).
        borrow: which projections the target takes from the source.
        start_step: first step with borrowing (kept for the float form; windows say it themselves).
        max_tokens: act only in layers with at most this many query positions (P2P: 32 * 32).
        rows: ``"all"`` target rows, or only the ``"conditional"`` one.
    """

    def __init__(
        self,
        state: EditState,
        self_replace,
        borrow: tuple[str, ...] = ("query", "key"),
        start_step: int = 0,
        max_tokens: int | None = None,
        rows: str = "all",
    ):
        unknown = set(borrow) - set(_PROJECTIONS)
        if unknown:
            raise ValueError(f"cannot borrow {sorted(unknown)}; choose from {_PROJECTIONS}")
        if rows not in _ROWS:
            raise ValueError(f"rows must be one of {_ROWS}, got {rows!r}")
        self.state = state
        self.window = LeadingFraction(float(self_replace)) if isinstance(self_replace, (int, float)) else self_replace
        self.borrow = tuple(borrow)
        self.start_step = start_step
        self.max_tokens = max_tokens
        self.rows = rows

    def active(self, query_len: int | None = None) -> bool:
        if self.max_tokens is not None and query_len is not None and query_len > self.max_tokens:
            return False
        step = self.state.step
        return step >= self.start_step and self.window.active(step, self.state.num_steps)

    def target_rows(self) -> list[int]:
        layout = self.state.layout
        if self.rows == "conditional":
            return [layout.index(TARGET, True)]
        return layout.rows_of(TARGET)

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        if is_cross or not self.active(query.shape[2]):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        layout = self.state.layout
        tensors = {"query": query, "key": key, "value": value}
        for name in self.borrow:
            t = tensors[name].clone()
            for row in self.target_rows():
                t[row] = tensors[name][layout.source_partner(row)]
            tensors[name] = t
        return F.scaled_dot_product_attention(
            tensors["query"], tensors["key"], tensors["value"], attn_mask=attention_mask, scale=attn.scale
        )
