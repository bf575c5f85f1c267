"""What a method hands the sampler: text embeddings per batch row, processors, latent hooks.

A method (ALE, and later P2P, MasaCtrl, ...) is a composition of the parts in
:mod:`aledit.attention`, :mod:`aledit.hooks` and :mod:`aledit.ore`; it returns an
:class:`EditPlan` and the pipeline runs it on a sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..attention.recorder import AttentionRecorder
from ..samplers.base import LatentHook

__all__ = ["EditPlan", "guidance_scale_embedding"]


@dataclass(frozen=True)
class EditPlan:
    """Everything a method attaches to one sampler call.

    Attributes:
        row_embeddings: text embedding of every UNet batch row, ``[rows, T, D]``, in the order of
            the call's :class:`~aledit.attention.BatchLayout`.
        choose_processor: ``(layer name, current processor) -> processor`` for every attention
            layer of the UNet.
        hooks: latent hooks run after each step, in order.
        recorder: collects cross-attention maps per object, if asked for.
        source_prompt, target_prompt: the base prompts of the two branches.
    """

    row_embeddings: torch.Tensor
    choose_processor: Callable[[str, object], object]
    hooks: tuple[LatentHook, ...] = ()
    recorder: AttentionRecorder | None = None
    source_prompt: str = ""
    target_prompt: str = ""
    extras: dict = field(default_factory=dict)


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance weight ``w`` ``[B]`` -> ``[B, dim]`` (the
    ``timestep_cond`` of guidance-distilled UNets)."""
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
