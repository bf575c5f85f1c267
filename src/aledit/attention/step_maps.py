"""A small store of per-step cross-attention maps of chosen words, for local blends.

P2P's local blend reads "the five 16x16 cross maps": on SD-1.x at 512 the layers at latent / 4
(two in the encoder, three in the decoder). :class:`StepMaps` keeps only what a blend needs: for
each branch's conditional row, the maps of the blend words' token positions, averaged over heads
and summed over the layers of that one UNet level, ``[n_tokens, h, w]``. Sums and means differ by
a constant factor that the blend's normalisation by the maximum removes.

The level is ``latent / 2**level`` (rounded up like the UNet). A shallow UNet without a layer
there (the tiny test models: 16x16 and 8x8 for a 16x16 latent) falls back to the coarsest level
it has: the first UNet call shows every level, and the store keeps the best one seen so far.

Over steps, maps are summed (``accumulate=True``: P2P's ``AttentionStore``, and InfEdit's code)
or only the current step's are kept (InfEdit's paper, ``M_t``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .state import EditState

__all__ = ["StepMaps"]


class StepMaps:
    """Per-step, head-averaged cross-attention maps of chosen tokens at one UNet level.

    Args:
        state: the call's state (step index, latent size).
        tokens: ``{branch: token positions}``: whose maps to keep on that branch's conditional
            row (:data:`~aledit.attention.state.SOURCE` / ``TARGET``).
        accumulate: sum the maps over all steps so far, or keep only the current step's.
        level: UNet level to keep, ``latent / 2**level`` (2: P2P's 16x16 maps at 512).
    """

    def __init__(self, state: EditState, tokens: Mapping[str, Sequence[int]], accumulate: bool = True, level: int = 2):
        self.state = state
        self.tokens = {branch: tuple(int(p) for p in positions) for branch, positions in tokens.items() if positions}
        self.accumulate = accumulate
        self.level = level
        self._hw: tuple[int, int] | None = None
        self._step: int | None = None
        self._done: dict[str, torch.Tensor] = {}  # sum over finished steps, [n, HW]
        self._current: dict[str, torch.Tensor] = {}  # this step, [n, HW]

    @property
    def wanted_hw(self) -> tuple[int, int]:
        h, w = self.state.latent_hw
        for _ in range(self.level):
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    @property
    def hw(self) -> tuple[int, int] | None:
        """``(h, w)`` of the level kept (``None`` before the first map)."""
        return self._hw

    def wants(self, hw: tuple[int, int]) -> bool:
        """Whether a layer of resolution ``hw`` is (or becomes) the kept level."""
        hw = tuple(hw)
        if not self.tokens or hw == self._hw:
            return bool(self.tokens)
        if self._hw == self.wanted_hw:
            return False
        if hw == self.wanted_hw:
            return True
        return self._hw is None or hw[0] * hw[1] < self._hw[0] * self._hw[1]

    @torch.no_grad()
    def add(self, branch: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs``: one conditional row's probabilities ``[heads, h*w, T]`` at a layer of
        resolution ``hw``; ignored unless the branch has tokens and the level is wanted."""
        hw = tuple(hw)
        if branch not in self.tokens or not self.wants(hw):
            return
        if hw != self._hw:  # a better level: forget the previous one
            self._hw, self._step, self._done, self._current = hw, self.state.step, {}, {}
        if self.state.step != self._step:
            self._next_step()
        maps = probs[:, :, list(self.tokens[branch])].float().mean(dim=0).transpose(0, 1)  # [n, HW]
        previous = self._current.get(branch)
        self._current[branch] = maps if previous is None else previous + maps

    def _next_step(self) -> None:
        if self.accumulate:
            for branch, maps in self._current.items():
                self._done[branch] = maps if branch not in self._done else self._done[branch] + maps
        self._current = {}
        self._step = self.state.step

    def maps(self, branch: str) -> torch.Tensor | None:
        """``[n_tokens, h, w]`` maps of ``branch``'s tokens (summed over the level's layers, and
        over steps when accumulating), or ``None`` if nothing was recorded for it."""
        current = self._current.get(branch)
        done = self._done.get(branch) if self.accumulate else None
        if current is None and done is None:
            return None
        total = done if current is None else current if done is None else done + current
        return total.reshape(total.shape[0], *self._hw)
