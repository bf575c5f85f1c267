"""Checks of numeric settings, shared by every config dataclass (they raise ``ValueError`` with
a message a user can act on; the CLI turns it into one line)."""

from __future__ import annotations

import math

__all__ = ["check_choice", "check_flag", "check_fraction", "check_number"]


def check_number(name: str, value, low: float | None = None, high: float | None = None, *, integer: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number in ``[low, high]`` (an int when
    ``integer``); config dataclasses call it from ``__post_init__``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else format(low, 'g')}, {'inf' if high is None else format(high, 'g')}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def check_fraction(name: str, value) -> None:
    """A window boundary or schedule: a finite number in [0, 1]."""
    check_number(name, value, 0.0, 1.0)


def check_flag(name: str, value) -> None:
    """A switch: ``True`` or ``False`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
