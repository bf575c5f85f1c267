"""Cross-attention maps that keep their autograd graph, for losses on attention (DPL).

:class:`~aledit.attention.recording.RecordingAttnProcessor` records detached maps (to look at);
DPL optimises token embeddings *through* the maps, so :class:`GraphRecordingAttnProcessor`
computes the probabilities explicitly and hands them, graph attached, to an
:class:`AttentionCapture`, which averages one UNet level over heads and layers.
"""

from __future__ import annotations

import torch

from .base import EditAttnProcessor
from .state import SOURCE, EditState

__all__ = ["AttentionCapture", "GraphRecordingAttnProcessor"]


class AttentionCapture:
    """Cross-attention probabilities of one row at one UNet level, with their graph.

    Args:
        hw: ``(h, w)`` of the level to keep (DPL: 16x16 at 512); other levels are ignored.
    """

    def __init__(self, hw: tuple[int, int]):
        self.hw = tuple(hw)
        self._maps: list[torch.Tensor] = []

    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: ``[heads, h*w, T]`` of one row (not detached)."""
        if tuple(hw) == self.hw:
            self._maps.append(probs.mean(dim=0))

    def clear(self) -> None:
        self._maps = []

    def aggregate(self) -> torch.Tensor:
        """``[h*w, T]``: the mean over heads and recorded layers since the last :meth:`clear`."""
        if not self._maps:
            raise ValueError(f"no cross-attention layer of resolution {self.hw} ran; pick a level the UNet has")
        return torch.stack(self._maps).mean(dim=0)


class GraphRecordingAttnProcessor(EditAttnProcessor):
    """Attention computed as ``softmax(q k^T * scale) v`` whose probabilities of one row go to a
    capture with their graph (gradients reach the text embedding through them).

    Args:
        state: the call's state (its layout names the row; its latent size gives each layer's
            resolution).
        capture: an :class:`AttentionCapture` (or any ``add(probs [heads, Lq, Lk], hw)``).
        branch: whose conditional row to capture.
    """

    def __init__(self, state: EditState, capture, branch: str = SOURCE):
        self.state = state
        self.capture = capture
        self.branch = branch

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        logits = torch.matmul(query, key.transpose(-1, -2)) * attn.scale  # [B, heads, Lq, Lk]
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.softmax(dim=-1)
        row = self.state.layout.index(self.branch, True)
        self.capture.add(probs[row], self.state.layer_hw(query.shape[2]))
        return torch.matmul(probs.to(value.dtype), value)
