"""A processor that only watches: records one branch's attention, computes plain attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import EditAttnProcessor
from .state import SOURCE, EditState

__all__ = ["RecordingAttnProcessor"]


class RecordingAttnProcessor(EditAttnProcessor):
    """Plain attention that hands one row's probabilities to a recorder.

    Args:
        state: the call's shared state.
        recorder: an object with ``add(probs [heads, Lq, Lk], hw)`` (see :mod:`.recorder`).
        branch: whose conditional row to record.
    """

    def __init__(self, state: EditState, recorder, branch: str = SOURCE):
        self.state = state
        self.recorder = recorder
        self.branch = branch

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        row = self.state.layout.index(self.branch, True)
        logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            logits = logits + attention_mask[row]
        self.recorder.add(logits.softmax(dim=-1), self.state.layer_hw(query.shape[2]))
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
