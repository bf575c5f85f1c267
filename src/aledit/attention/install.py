"""Installing processors on a UNet for one call and restoring the previous ones afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["attention_processors", "is_cross_attention", "is_self_attention"]


def is_self_attention(name: str) -> bool:
    """diffusers names a transformer block's self-attention ``...attn1.processor``."""
    return name.endswith("attn1.processor")


def is_cross_attention(name: str) -> bool:
    return name.endswith("attn2.processor")


@contextlib.contextmanager
def attention_processors(unet, choose: Callable[[str, object], object]) -> Iterator[dict]:
    """Installs ``choose(name, current_processor)`` on every attention layer of ``unet`` with
    ``set_attn_processor``; restores the previous processors on exit, also after an error."""
    previous = dict(unet.attn_processors)
    chosen = {name: choose(name, processor) for name, processor in previous.items()}
    unet.set_attn_processor(chosen)
    try:
        yield chosen
    finally:
        unet.set_attn_processor(previous)
