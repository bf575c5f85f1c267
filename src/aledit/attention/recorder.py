"""Records cross-attention maps of chosen token spans, averaged over heads, tokens, layers and
steps, to show where each object's words attend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AttentionRecorder"]


class AttentionRecorder:
    """Accumulates per-object cross-attention maps.

    Args:
        spans: token span ``(start, stop)`` of each object.
        resolution: ``(h, w)`` every layer's map is resized to before averaging.
    """

    def __init__(self, spans: tuple[tuple[int, int], ...], resolution: tuple[int, int]):
        self.spans = tuple(spans)
        self.resolution = tuple(resolution)
        self._sum = torch.zeros(len(self.spans), *self.resolution)
        self._count = 0

    @torch.no_grad()
    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: attention probabilities of one row, ``[heads, h*w, T]``."""
        maps = torch.stack([probs[:, :, a:b].mean(dim=(0, 2)) for a, b in self.spans])  # [N, HW]
        maps = maps.float().reshape(len(self.spans), 1, *hw)
        maps = F.interpolate(maps, size=self.resolution, mode="bilinear", align_corners=False)
        self._sum += maps[:, 0].cpu()
        self._count += 1

    def maps(self) -> torch.Tensor:
        """``[N, h, w]`` mean maps, each scaled to a maximum of 1 (zeros if nothing recorded)."""
        if self._count == 0:
            return self._sum.clone()
        mean = self._sum / self._count
        peak = mean.flatten(1).amax(dim=1).clamp_min(1e-12)
        return mean / peak[:, None, None]


class SelfAttentionRecorder:
    """Accumulates one row's self-attention probabilities at one layer resolution.

    Args:
        resolution: ``(h, w)`` of the layers to record; other layers are ignored.
    """

    def __init__(self, resolution: tuple[int, int]):
        self.resolution = tuple(resolution)
        n = self.resolution[0] * self.resolution[1]
        self._sum = torch.zeros(n, n)
        self._count = 0

    @torch.no_grad()
    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: ``[heads, h*w, h*w]`` of one row."""
        if tuple(hw) != self.resolution:
            return
        self._sum += probs.float().mean(dim=0).cpu()
        self._count += 1

    def matrix(self) -> torch.Tensor:
        """``[h*w, h*w]`` mean self-attention; row p is where pixel p attends."""
        if self._count == 0:
            raise ValueError(f"no self-attention layer of resolution {self.resolution} was recorded")
        return self._sum / self._count
