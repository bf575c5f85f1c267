"""When a control acts: step windows, as the papers count them.

Every control asks ``window.active(step, num_steps)`` with the 0-based step index. Two counting
rules exist in the reference code and both are kept, exactly:

* :class:`StepWindow` (Prompt-to-Prompt, FPE, MasaCtrl): steps ``int(start * N) <= step <
  int(end * N)``; P2P's ``cross_replace_steps = 0.4`` of 50 steps acts on steps 0..19.
* :class:`LeadingFraction` (InfEdit, ALE): steps with ``(step + 1) / N < fraction``;
  :class:`UpToFraction`, its inclusive twin, is InfEdit's cross-attention schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import check_fraction

__all__ = ["LeadingFraction", "StepRange", "StepWindow", "UpToFraction"]


@dataclass(frozen=True)
class StepWindow:
    """Steps ``[int(start * N), int(end * N))`` of ``N``, fractions in [0, 1]."""

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        check_fraction("window start", self.start)
        check_fraction("window end", self.end)

    def active(self, step: int, num_steps: int) -> bool:
        return int(self.start * num_steps) <= step < int(self.end * num_steps)


@dataclass(frozen=True)
class StepRange:
    """Absolute steps ``[first, stop)`` (``stop=None``: to the end); MasaCtrl starts at step 4."""

    first: int = 0
    stop: int | None = None

    def active(self, step: int, num_steps: int) -> bool:
        return self.first <= step and (self.stop is None or step < self.stop)


@dataclass(frozen=True)
class LeadingFraction:
    """Steps with ``(step + 1) / N < fraction`` (InfEdit's and ALE's self-attention schedule)."""

    fraction: float

    def __post_init__(self):
        check_fraction("fraction", self.fraction)

    def active(self, step: int, num_steps: int) -> bool:
        return (step + 1) / num_steps < self.fraction


@dataclass(frozen=True)
class UpToFraction:
    """Steps with ``(step + 1) / N <= fraction``: InfEdit's cross-attention schedule (its code
    tests ``cross_replace_steps >= (i + 1) / N``; the self-attention schedule uses ``<``,
    :class:`~aledit.attention.schedule.LeadingFraction`)."""

    fraction: float

    def __post_init__(self):
        check_fraction("fraction", self.fraction)

    def active(self, step: int, num_steps: int) -> bool:
        return (step + 1) / num_steps <= self.fraction
