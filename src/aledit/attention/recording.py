"""A processor that only watches: records one branch's attention, computes plain attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import EditAttnProcessor
from .state import SOURCE, EditState

__all__ = ["RecordingAttnProcessor"]


class RecordingAttnProcessor(EditAttnProcessor):
    """Plain attention that hands one row's probabilities to a recorder.

    Only layers the recorder :meth:`wants` are recorded, and their probabilities are computed a
    block of query rows at a time (at most ``chunk_bytes`` of logits), reduced by the recorder
    (:meth:`reduce`) and handed over as one ``[Lq, X]`` tensor (:meth:`add_reduced`): a layer's
    full ``[heads, Lq, Lk]`` map is never held (8 heads of a 128x128 self-attention layer would
    be 8.6 GB). The layer's output is the ordinary attention, computed by
    ``scaled_dot_product_attention``.

    Args:
        state: the call's shared state.
        recorder: an object with ``wants(hw, is_cross)``, ``reduce(probs [heads, rows, Lk])`` and
            ``add_reduced(reduced [Lq, X], hw)`` (see :mod:`.recorder`).
        branch: whose conditional row to record.
        chunk_bytes: largest block of float32 logits computed at once.
    """

    def __init__(self, state: EditState, recorder, branch: str = SOURCE, chunk_bytes: int = 64 << 20):
        self.state = state
        self.recorder = recorder
        self.branch = branch
        self.chunk_bytes = int(chunk_bytes)

    @torch.no_grad()
    def _record(self, attn, query, key, attention_mask, hw) -> None:
        row = self.state.layout.index(self.branch, True)
        q, k_t = query[row], key[row].transpose(-1, -2)  # [heads, Lq, d], [heads, d, Lk]
        heads, lq, _ = q.shape
        mask = attention_mask[row] if attention_mask is not None else None  # [heads, 1 | Lq, Lk]
        rows = max(1, self.chunk_bytes // (4 * heads * k_t.shape[-1]))
        parts = []
        for start in range(0, lq, rows):
            logits = torch.matmul(q[:, start : start + rows], k_t) * attn.scale
            if mask is not None:
                logits = logits + (mask if mask.shape[-2] == 1 else mask[:, start : start + rows])
            parts.append(self.recorder.reduce(logits.softmax(dim=-1)))
        self.recorder.add_reduced(torch.cat(parts, dim=0), hw)

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        hw = self.state.layer_hw(query.shape[2])
        if self.recorder.wants(hw, is_cross):
            self._record(attn, query, key, attention_mask, hw)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
