"""Installing processors on a UNet for one call and restoring the previous ones afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["attention_processors", "is_cross_attention", "is_self_attention", "self_attention_order"]


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


def self_attention_order(processors) -> tuple[str, ...]:
    """Names of the self-attention processors in the order the UNet runs them: down blocks,
    mid block, up blocks (``unet.attn_processors`` lists the mid block last). MasaCtrl's layer
    indices (10-15 of SD-1.x's 16) count in this order."""
    group = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

    def key(name: str):
        parts = name.split(".")
        numbers = tuple(int(p) for p in parts if p.isdigit())
        return (group.get(parts[0], 3), numbers)

    return tuple(sorted((n for n in processors if is_self_attention(n)), key=key))
