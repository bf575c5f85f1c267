"""CPAM (Vo et al., Context-Preserving Adaptive Manipulation for zero-shot real image editing).

The source image is inverted with DDIM under the null prompt ``""`` (at guidance 7.5, which for
``""`` is plain guidance 1) and the source branch follows the inversion trajectory; the target
branch starts from the inverted noise with the target prompt at guidance 7.5 (Algorithm 1).

* **Preservation adaptation** (Eqs. 1-3, every self-attention layer and step): target queries
  outside the target mask ``M_t`` attend only to the source's keys and values outside the source
  mask ``M_s`` (``SC_bg``); queries inside ``M_t`` keep the target's own self-attention, or, in
  object retention (task ``retain``, from step ``T`` and layer ``L`` on), attend only to the
  source's keys and values inside ``M_t`` (``SC_fg``); ``SC = M_t SC_fg + (1 - M_t) SC_bg``.
  This is :class:`~aledit.attention.masked_mutual.MaskedMutualSelfAttentionProcessor` (MasaCtrl's
  mask-guided mutual self-attention) with ``object_keys="target"`` and an object window.
  A random 10% of the layers run normal self-attention at each step (Sec. 3.3).
* **Localized extraction** (Eq. 4): target queries inside ``M_t`` read the target prompt,
  those outside the null prompt
  (:class:`~aledit.attention.localized.LocalizedExtractionProcessor`).
* **Masks**: ``M_s`` from the user or a mask provider (their union for several objects), else
  derived from the source row's cross-attention over the source words; ``M_t`` starts as ``M_s``
  dilated by a square of side ``int(sqrt(area) * 0.1)`` and from step ``T_m`` on is refined from
  the target's cross-attention over the target words
  (:class:`~aledit.attention.localized.CPAMMasks`). The masks are returned in
  ``EditOutput.extras``.

Tasks (:data:`TASKS`): ``edit`` and ``retain`` as above; ``background`` edits the region outside
the given object mask (the mask is inverted and barely dilated, no refinement), so the object is
what preservation keeps; ``remove`` (our design, the public code has none; docs/methods.md) lets
every target query read only the source's background (``object_keys="background"``) with
``M_s = M_t`` the dilated object mask, the target phrase filling the region through localized
extraction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention.install import is_cross_attention
from ..attention.localized import CPAMMasks, LocalizedExtractionProcessor
from ..attention.masked_mutual import MaskedMutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.schedule import StepRange
from ..attention.state import SOURCE, TARGET
from ..masks.ops import MaskError, downsample_any
from ..masks.refine import area_kernel, dilate_square
from ..ore import encode_prompts
from ..prompts import edit_prompts, span_positions
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import INVERSION_PROMPTS, MASKS_OPTIONAL, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import SD15, MethodInfo, register

__all__ = ["CPAMConfig", "CPAMMethod", "FreeLayers", "PreservationWindow", "TASKS", "retain_start"]

logger = logging.getLogger(__name__)

TASKS = ("edit", "retain", "background", "remove")
NEVER = StepRange(0, 0)


@dataclass(frozen=True)
class CPAMConfig:
    """Hyperparameters of CPAM (defaults: the paper, Secs. 3-4 and A.5, where it gives them;
    else vdkhoi20/CPAM's SD-1.5 runner; docs/methods.md lists which is which).

    Attributes:
        task: ``"edit"`` (object / attribute change, non-rigid included), ``"retain"`` (edit
            keeping the object's identity: object retention from ``retain_start_step`` /
            ``retain_start_layer``), ``"background"`` (change only what lies outside the given
            object mask) or ``"remove"`` (fill the object's region from the background).
        guidance: classifier-free guidance of the target (paper 7.5).
        retain_start_step: ``T``: first denoising step (0-based) of object retention (paper 3).
        retain_start_layer: ``L``: first self-attention layer (forward order, 0-based) of object
            retention; ``None``: the second half of the UNet's layers (8 of SD-1.5's 16, the
            paper's L = 8; the code's IMBA runner uses 7).
        background_start_step, background_end_step: the steps with preservation adaptation
            (``SC_bg``; paper: every step; ``None`` = to the end).
        background_start_layer: first self-attention layer with it (paper: every layer, 0).
        free_fraction: share of the self-attention layers that run normal self-attention at each
            step, drawn at random (paper 10%; the public code has none: 0).
        free_seed: seed of that draw.
        localized_extraction: Eq. 4 in the cross-attention layers.
        target_dilation: ``M_t = M_s`` dilated by a square of side ``int(sqrt(area) * this)``
            (code ``mask_scale`` 0.1).
        background_dilation: the same for the inverted mask of task ``background`` (code 0.001:
            barely dilated).
        refine: refine ``M_t`` from the target's cross-attention (tasks edit and retain).
        refine_start_step: ``T_m``: first step that uses the refined mask (code 1).
        refine_threshold: threshold of the normalised maps (code 0.45).
        refine_accumulate: average the maps of all steps so far (code) instead of the last.
        inversion_prompt: what the inversion and the source branch are conditioned on:
            ``"auto"`` = ``"empty"`` (paper: null-text guided inversion) with masks, and
            ``"source"`` without, since a derived ``M_s`` needs the source words.
        feed_source: replace the source latent after each step by the inversion's (the code's
            ``ref_intermediates``).
    """

    task: str = "edit"
    guidance: float = 7.5
    retain_start_step: int = 3
    retain_start_layer: int | None = None
    background_start_step: int = 0
    background_end_step: int | None = None
    background_start_layer: int = 0
    free_fraction: float = 0.1
    free_seed: int = 0
    localized_extraction: bool = True
    target_dilation: float = 0.1
    background_dilation: float = 0.001
    refine: bool = True
    refine_start_step: int = 1
    refine_threshold: float = 0.45
    refine_accumulate: bool = True
    inversion_prompt: str = "auto"
    feed_source: bool = True

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        check_number("guidance", self.guidance, 0.0)
        check_number("retain_start_step", self.retain_start_step, 0, integer=True)
        if self.retain_start_layer is not None:
            check_number("retain_start_layer", self.retain_start_layer, 0, integer=True)
        check_number("background_start_step", self.background_start_step, 0, integer=True)
        if self.background_end_step is not None:
            check_number("background_end_step", self.background_end_step, self.background_start_step + 1, integer=True)
        check_number("background_start_layer", self.background_start_layer, 0, integer=True)
        check_fraction("free_fraction", self.free_fraction)
        check_number("free_seed", self.free_seed, 0, integer=True)
        check_flag("localized_extraction", self.localized_extraction)
        check_number("target_dilation", self.target_dilation, 0.0, 1.0)
        check_number("background_dilation", self.background_dilation, 0.0, 1.0)
        check_flag("refine", self.refine)
        check_number("refine_start_step", self.refine_start_step, 0, integer=True)
        check_fraction("refine_threshold", self.refine_threshold)
        check_flag("refine_accumulate", self.refine_accumulate)
        check_choice("inversion_prompt", self.inversion_prompt, ("auto", *INVERSION_PROMPTS))
        check_flag("feed_source", self.feed_source)


def retain_start(num_layers: int, start_layer: int | None) -> int:
    """Forward-order index of the first self-attention layer with object retention: the given
    one, or the second half of ``num_layers`` (8 of SD-1.5's 16)."""
    if start_layer is None:
        return num_layers // 2
    if start_layer >= num_layers:
        raise ValueError(f"retain_start_layer must be below the UNet's {num_layers} self-attention layers, got {start_layer}")
    return start_layer


@dataclass(frozen=True)
class FreeLayers:
    """CPAM's "normal self-attention in 10% of the layers": at each step, ``round(fraction *
    num_layers)`` layers drawn uniformly at random (a generator seeded by ``seed`` and the step)."""

    num_layers: int
    fraction: float
    seed: int = 0

    def free(self, step: int) -> frozenset[int]:
        k = round(self.fraction * self.num_layers)
        if k == 0:
            return frozenset()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return frozenset(torch.randperm(self.num_layers, generator=generator)[:k].tolist())


@dataclass(frozen=True)
class PreservationWindow:
    """When layer ``index`` applies preservation adaptation: inside the step range, at or after
    ``start_layer``, and not drawn free this step."""

    index: int
    steps: StepRange
    start_layer: int
    free: FreeLayers

    def active(self, step: int, num_steps: int) -> bool:
        if self.index < self.start_layer or not self.steps.active(step, num_steps):
            return False
        return self.index not in self.free.free(step)


@register(
    MethodInfo(
        name="cpam",
        title="CPAM",
        paper=(
            "Vo et al., CPAM: Context-Preserving Adaptive Manipulation for Zero-Shot Real Image Editing, "
            "arXiv 2506.18438"
        ),
        config_class=CPAMConfig,
        default_model=SD15,
        default_steps=50,
        default_size=512,
        sampler="DDIM inversion with \"\" + DDIM (source fed from the inversion)",
        summary="mask-guided self-attention keeps background (and object: task=retain); new words only inside the mask",
    )
)
class CPAMMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of a CPAM edit.

    Masks are optional: without them ``M_s`` comes from the source words' cross-attention
    (tasks ``edit`` and ``retain`` only).
    """

    name: ClassVar[str] = "cpam"
    masks: ClassVar[str] = MASKS_OPTIONAL
    config_class: ClassVar[type] = CPAMConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(1.0, self.config.guidance)

    @property
    def dilation_ratio(self) -> float:
        return 0.0  # CPAM dilates M_t itself, by the object's size

    def sampler(self, scheduler, num_steps: int):
        from ..samplers.ddim_edit import DDIMEditConfig, DDIMEditSampler

        return DDIMEditSampler(scheduler, DDIMEditConfig(num_steps=num_steps, feed_source=self.config.feed_source))

    def _masks(self, ctx: MethodContext, prompts) -> CPAMMasks:
        cfg, task = self.config, self.config.task
        target_words = span_positions(prompts.target_layout.spans)
        refine_from = cfg.refine_start_step if cfg.refine and task in ("edit", "retain") else None
        common = dict(threshold=cfg.refine_threshold, accumulate=cfg.refine_accumulate, dilation=cfg.target_dilation)
        if ctx.masks is None:
            if task in ("background", "remove"):
                raise MaskError(
                    f"CPAM's task {task!r} needs the object's mask: pass --mask NAME=PATH or --mask-provider "
                    "(masks={phrase: mask} in Python)"
                )
            tokens = {SOURCE: span_positions(prompts.source_layout.spans), TARGET: target_words}
            return CPAMMasks(ctx.state, None, None, tokens, refine_from, **common)
        objects = ctx.masks.union()
        if task == "background":
            source = ~objects
            target = dilate_square(source, area_kernel(source, cfg.background_dilation))
        elif task == "remove":
            source = dilate_square(objects, area_kernel(objects, cfg.target_dilation))
            target = source
        else:
            source = objects
            target = dilate_square(source, area_kernel(source, cfg.target_dilation))
        pooling = "all" if task == "background" else "any"  # the object keeps every cell it touches
        return CPAMMasks(ctx.state, source, target, {TARGET: target_words}, refine_from, pooling=pooling, **common)

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings, preservation adaptation on every self-attention layer, localized
        extraction on every cross-attention layer, and the masks they share.

        Raises:
            MaskError: task ``background`` / ``remove`` without masks, or
                ``inversion_prompt="empty"`` without masks.
            ValueError: a ``retain_start_layer`` past the UNet's layers.
        """
        cfg, state = self.config, ctx.state
        prompts = edit_prompts(ctx.tokenizer, ctx.edits, ctx.source_prompt)
        inversion = cfg.inversion_prompt
        if inversion == "auto":
            inversion = "empty" if ctx.masks is not None else "source"
        if ctx.masks is None and inversion == "empty" and cfg.task in ("edit", "retain"):
            raise MaskError(
                "CPAM without masks derives M_s from the source prompt's words, but inversion_prompt='empty' "
                "leaves the source prompt empty: pass masks or use inversion_prompt='source' (or 'auto')"
            )
        masks = self._masks(ctx, prompts)
        empty = inversion == "empty"
        texts = [prompts.target, ""] + ([] if empty else [prompts.source])
        encoded = encode_prompts(ctx.text_encoder, ctx.tokenizer, texts)
        e_tgt, e_uncond = encoded[0], encoded[1]
        e_src = e_uncond if empty else encoded[2]
        row_embeddings = state.layout.embeddings(e_src, e_tgt, e_uncond)

        layers = tuple(ctx.attention_layers)
        index = {name: i for i, name in enumerate(layers)}
        retain_from = retain_start(len(layers), cfg.retain_start_layer) if layers else 0
        free = FreeLayers(len(layers), cfg.free_fraction, cfg.free_seed)
        steps = StepRange(cfg.background_start_step, cfg.background_end_step)
        retained = StepRange(cfg.retain_start_step)
        object_keys = "background" if cfg.task == "remove" else "target"

        def object_window(i: int):
            if cfg.task == "remove":
                return None  # every step the layer acts
            if cfg.task == "retain" and i >= retain_from:
                return retained
            return NEVER

        record = ctx.record_attention
        recorder = AttentionRecorder(prompts.target_layout.spans, record) if record else None

        def choose(name, current):
            if name in index:
                i = index[name]
                window = PreservationWindow(i, steps, cfg.background_start_layer, free)
                return MaskedMutualSelfAttentionProcessor(state, window, masks, object_keys, object_window(i))
            if is_cross_attention(name):
                return LocalizedExtractionProcessor(state, masks, e_uncond, cfg.localized_extraction, recorder)
            return current

        given = masks.source is not None
        return EditPlan(
            row_embeddings=row_embeddings,
            choose_processor=choose,
            recorder=recorder,
            source_prompt="" if empty else prompts.source,
            target_prompt=prompts.target,
            inversion_embedding=e_src,
            uncond_embedding=e_uncond,
            extras={
                "cpam_task": cfg.task,
                "cpam_source_mask": downsample_any(masks.source, state.latent_hw) if given else None,
                "cpam_target_mask": downsample_any(masks.target, state.latent_hw) if given else None,
                "cpam_refined_masks": masks.history,
                "cpam_retain_layers": tuple(n for n, i in index.items() if i >= retain_from) if cfg.task == "retain" else (),
            },
        )
