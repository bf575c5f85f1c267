"""Records attention maps averaged on the fly (nothing per step or per layer is kept).

* :class:`AttentionRecorder`: cross-attention maps of chosen token spans, averaged over heads,
  tokens, layers and steps, to show where each object's words attend.
* :class:`SelfAttentionRecorder`: one row's self-attention at one layer resolution, averaged
  over heads, layers of that resolution and steps.

Both reduce a layer's probabilities query row by query row (:meth:`reduce`), so a caller can
hand them the probabilities of a few query rows at a time (:class:`~.recording.RecordingAttnProcessor`
does) and never hold a layer's full ``[heads, HW, HW]`` map; :meth:`add` takes a whole layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AttentionRecorder", "SelfAttentionRecorder"]


class AttentionRecorder:
    """Accumulates per-object cross-attention maps.

    Args:
        spans: token span ``(start, stop)`` of each object.
        resolution: ``(h, w)`` every layer's map is resized to before averaging.
        layer_hw: record only the cross-attention layers of this ``(h, w)`` (``None``: every
            cross-attention layer).
    """

    def __init__(
        self,
        spans: tuple[tuple[int, int], ...],
        resolution: tuple[int, int],
        layer_hw: tuple[int, int] | None = None,
    ):
        self.spans = tuple(spans)
        self.resolution = tuple(resolution)
        self.layer_hw = tuple(layer_hw) if layer_hw is not None else None
        self._sum = torch.zeros(len(self.spans), *self.resolution)
        self._count = 0

    def wants(self, hw: tuple[int, int], is_cross: bool = True) -> bool:
        """Whether a layer of resolution ``hw`` is recorded (cross-attention, at ``layer_hw``)."""
        return is_cross and (self.layer_hw is None or tuple(hw) == self.layer_hw)

    @torch.no_grad()
    def reduce(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs [heads, rows, T]`` -> ``[rows, N]``: each object's mean over heads and its tokens."""
        return torch.stack([probs[:, :, a:b].mean(dim=(0, 2)) for a, b in self.spans], dim=1)

    @torch.no_grad()
    def add_reduced(self, reduced: torch.Tensor, hw: tuple[int, int]) -> None:
        """``reduced [h*w, N]`` (:meth:`reduce` of every query row of a layer)."""
        maps = reduced.t().float().reshape(len(self.spans), 1, *hw)
        maps = F.interpolate(maps, size=self.resolution, mode="bilinear", align_corners=False)
        self._sum += maps[:, 0].cpu()
        self._count += 1

    @torch.no_grad()
    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: attention probabilities of one row, ``[heads, h*w, T]``."""
        self.add_reduced(self.reduce(probs), hw)

    def maps(self) -> torch.Tensor:
        """``[N, h, w]`` mean maps, each scaled to a maximum of 1 (zeros if nothing recorded)."""
        if self._count == 0:
            return self._sum.clone()
        mean = self._sum / self._count
        peak = mean.flatten(1).amax(dim=1).clamp_min(1e-12)
        return mean / peak[:, None, None]


class SelfAttentionRecorder:
    """Accumulates one row's self-attention probabilities at one layer resolution.

    Memory: one ``[h*w, h*w]`` float32 sum (e.g. 67 MB for a 64x64 layer); layers of other
    resolutions are not recorded.

    Args:
        resolution: ``(h, w)`` of the layers to record; other layers are ignored.
    """

    def __init__(self, resolution: tuple[int, int]):
        self.resolution = tuple(resolution)
        n = self.resolution[0] * self.resolution[1]
        self._sum = torch.zeros(n, n)
        self._count = 0

    def wants(self, hw: tuple[int, int], is_cross: bool = False) -> bool:
        """Whether a layer is recorded: self-attention at :attr:`resolution` only."""
        return not is_cross and tuple(hw) == self.resolution

    @torch.no_grad()
    def reduce(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs [heads, rows, h*w]`` -> ``[rows, h*w]``: the mean over heads."""
        return probs.float().mean(dim=0)

    @torch.no_grad()
    def add_reduced(self, reduced: torch.Tensor, hw: tuple[int, int]) -> None:
        """``reduced [h*w, h*w]`` (:meth:`reduce` of every query row of a layer)."""
        if tuple(hw) != self.resolution:
            return
        self._sum += reduced.cpu()
        self._count += 1

    @torch.no_grad()
    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: ``[heads, h*w, h*w]`` of one row."""
        if tuple(hw) != self.resolution:
            return
        self.add_reduced(self.reduce(probs), hw)

    def matrix(self) -> torch.Tensor:
        """``[h*w, h*w]`` mean self-attention; row p is where pixel p attends."""
        if self._count == 0:
            raise ValueError(f"no self-attention layer of resolution {self.resolution} was recorded")
        return self._sum / self._count
