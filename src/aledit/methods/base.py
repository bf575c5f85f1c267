"""What every editing method shares: its guidance, its context, the plan it hands the sampler.

A method (ALE, P2P, MasaCtrl, FPE, InfEdit, ...) is a frozen config dataclass plus a small class
that *composes* the parts in :mod:`aledit.attention`, :mod:`aledit.hooks` and :mod:`aledit.ore`.
The pipeline asks it four things and never reads its config:

* :attr:`EditMethod.guidance`: classifier-free guidance of each branch (decides the batch rows);
* :meth:`EditMethod.sampler`: the sampler it runs on (virtual inversion, DDIM inversion + loop);
* :meth:`EditMethod.plan`: row embeddings, attention processors, latent hooks (:class:`EditPlan`);
* :attr:`EditMethod.dilation_ratio`: how much the pipeline dilates given masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ..attention.recorder import AttentionRecorder
from ..attention.state import BatchLayout, EditState
from ..edits import Edit
from ..masks.ops import ObjectMasks
from ..samplers.base import LatentGuide, LatentHook

__all__ = [
    "ConfiguredMethod",
    "EditMethod",
    "EditPlan",
    "Guidance",
    "INVERSION_PROMPTS",
    "MASKS_OPTIONAL",
    "MASKS_REQUIRED",
    "MASKS_UNUSED",
    "MethodContext",
    "SOURCE_LATENTS",
    "guidance_scale_embedding",
]

# How a method uses object masks (``EditMethod.masks``).
MASKS_REQUIRED = "required"  # needs one per edited object (given, or found by a provider)
MASKS_OPTIONAL = "optional"  # uses given masks (e.g. for its local blend); derives its own otherwise
MASKS_UNUSED = "unused"  # never looks at masks

# What a DDIM method inverts (and conditions its source branch) with: the source prompt, or ""
# (MasaCtrl's and FPE's official real-image scripts).
INVERSION_PROMPTS = ("source", "empty")

# How the pipeline encodes the source image (``EditPlan.source_latent``): the VAE posterior's
# mode, or a sample drawn with the call's generator.
SOURCE_LATENTS = ("mode", "sample")


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of the two branches.

    A branch with scale 1 needs no unconditional row, so the batch of one step holds 2 to 4
    rows (:meth:`layout`). ``embedded`` feeds LCM's guidance embedding instead of unconditional
    rows (guidance-distilled UNets only). ``paired_uncond`` runs an unconditional row for both
    branches exactly when the target's scale is above 1, whatever the source's (the ALE
    authors' batch of four: with source scale 1 the source row is still computed, its noise is
    ``u + 1 (c - u)``, and the target's unconditional row borrows the source's unconditional
    self-attention); with a target scale of at most 1 neither branch is guided.
    """

    source: float = 1.0
    target: float = 7.5
    embedded: bool = False
    paired_uncond: bool = False

    def layout(self) -> BatchLayout:
        if self.embedded:
            return BatchLayout.dual_branch(source_uncond=False, target_uncond=False)
        if self.paired_uncond:
            uncond = self.target > 1.0
            return BatchLayout.dual_branch(source_uncond=uncond, target_uncond=uncond)
        return BatchLayout.dual_branch(source_uncond=self.source != 1.0, target_uncond=self.target != 1.0)


@dataclass(frozen=True)
class MethodContext:
    """What the pipeline hands :meth:`EditMethod.plan` for one edit.

    Attributes:
        text_encoder, tokenizer: the pipeline's CLIP text model and tokenizer.
        edits: one :class:`~aledit.edits.Edit` per object, types resolved.
        masks: dilated object masks at the working resolution, in edit order (``None`` when the
            user gave none and the method does not require them).
        state: the call's shared state (its layout decides the rows).
        source_prompt: a fuller description of the source image containing every source phrase,
            or ``None`` (the phrases joined with " and ").
        record_attention: ``(h, w)`` to record the target's per-object cross-attention at.
        attention_layers: names of the UNet's self-attention processors in forward order
            (down, mid, up), for methods that pick layers by index (MasaCtrl).
    """

    text_encoder: Any
    tokenizer: Any
    edits: tuple[Edit, ...]
    masks: ObjectMasks | None
    state: EditState
    source_prompt: str | None = None
    record_attention: tuple[int, int] | None = None
    attention_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class EditPlan:
    """Everything a method attaches to one sampler call.

    Attributes:
        row_embeddings: text embedding of every UNet batch row, ``[rows, T, D]``, in the order of
            the call's :class:`~aledit.attention.BatchLayout`.
        choose_processor: ``(layer name, current processor) -> processor`` for every attention
            layer of the UNet.
        hooks: latent hooks run after each step, in order.
        guides: latent guides run before each step, in order (samplers with
            ``supports_guides`` only, e.g. virtual inversion).
        recorder: collects cross-attention maps per object, if asked for.
        source_prompt, target_prompt: the base prompts of the two branches.
        inversion_embedding: ``[T, D]`` the prompt embedding a DDIM inversion runs with (the
            source prompt, or the empty prompt for MasaCtrl's official setting); unused by the
            virtual-inversion sampler.
        uncond_embedding: ``[T, D]`` the empty prompt's embedding (null-text inversion starts
            from it).
        self_replace: the self-attention schedule used (reported in the output), if any.
        extras: method-specific results to return (e.g. masks a blend derived).
        source_latent: how the pipeline encodes the source image: ``"mode"`` of the VAE
            posterior, or a ``"sample"`` drawn with the call's generator before the sampler
            draws its noise (the ALE authors' code; the same seed then gives other noise).
        sampler_inputs: what the method hands its own sampler's ``prepare`` beyond the
            embeddings (DPL: the prompt whose noun tokens it learns); ``None`` for most.
    """

    row_embeddings: torch.Tensor
    choose_processor: Callable[[str, object], object]
    hooks: tuple[LatentHook, ...] = ()
    guides: tuple[LatentGuide, ...] = ()
    recorder: AttentionRecorder | None = None
    source_prompt: str = ""
    target_prompt: str = ""
    inversion_embedding: torch.Tensor | None = None
    uncond_embedding: torch.Tensor | None = None
    self_replace: float | None = None
    extras: dict = field(default_factory=dict)
    source_latent: str = "mode"
    sampler_inputs: Any = None

    def __post_init__(self):
        if self.source_latent not in SOURCE_LATENTS:
            raise ValueError(f"source_latent must be one of {', '.join(SOURCE_LATENTS)}, got {self.source_latent!r}")


@runtime_checkable
class EditMethod(Protocol):
    """The interface the pipeline sees. Implementations: :mod:`aledit.methods`.

    Attributes:
        name: registry name (``"ale"``, ``"p2p"``, ...).
        config: the method's frozen config dataclass.
        masks: :data:`MASKS_REQUIRED`, :data:`MASKS_OPTIONAL` or :data:`MASKS_UNUSED`.
        guidance: guidance of both branches.
        dilation_ratio: dilation the pipeline applies to given masks (ratio of the longer side).
    """

    name: ClassVar[str]
    masks: ClassVar[str]
    config: Any

    @property
    def guidance(self) -> Guidance: ...

    @property
    def dilation_ratio(self) -> float: ...

    def sampler(self, scheduler, num_steps: int): ...

    def plan(self, ctx: MethodContext) -> EditPlan: ...


class ConfiguredMethod:
    """What the built-in methods share: the frozen config they are built from (a default
    ``config_class()`` when none is given), and given masks dilated by the config's
    ``dilation_ratio`` (a method whose config has none overrides :attr:`dilation_ratio`).
    Subclasses add ``name``, ``masks``, ``guidance``, ``sampler`` and ``plan``."""

    config_class: ClassVar[type]

    def __init__(self, config=None):
        self.config = self.config_class() if config is None else config

    @property
    def dilation_ratio(self) -> float:
        return self.config.dilation_ratio


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

