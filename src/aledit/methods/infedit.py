"""InfEdit (Xu et al., Inversion-Free Image Editing with Natural Language, CVPR 2024).

Virtual inversion on an LCM (:mod:`aledit.samplers.virtual_inversion`, as ALE) with the paper's
Unified Attention Control, built from the shared parts:

* cross-attention: P2P's global refinement on the target's conditional row (the target takes
  the source's maps of aligned tokens, new tokens keep theirs) for steps with
  ``(step + 1) / N <= cross_replace`` (:mod:`aledit.attention.cross_control`);
* mutual self-attention: the target takes the source's queries and keys while
  ``(step + 1) / N < self_replace``, in every layer and guidance half
  (:class:`~aledit.attention.mutual_self.MutualSelfAttentionProcessor`, as ALE);
* local blend with two thresholds (:mod:`aledit.hooks.local_blend`): the target keeps its latent
  where its target words attend (threshold ``max(0.15 / sqrt(alpha_t), target_threshold)``)
  and outside the regions of the words to preserve (``source_threshold``), the source elsewhere.

Two branches instead of three: InfEdit's UAC adds a *layout* branch (source prompt; source Q, K,
V early, then target queries on source keys and values) that the blend takes the background from,
whose cross maps (refined towards the target) give the target mask, and that the code's last step
pastes inside the preserved-and-edited words. Here the source branch plays the layout branch's
part: the blend takes the source latent (the paper's ``z^src``), the target mask comes from the
target row's controlled maps (the same maps for new words; the source's maps for aligned words
inside the cross window, as the layout branch's would be), and the last-step paste is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..attention.cross_control import (
    CrossAttentionControlProcessor,
    CrossControl,
    index_mapper,
    pair_replaced_tokens,
    refinement_mapper,
)
from ..attention.install import is_cross_attention, is_self_attention
from ..attention.mutual_self import MutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.schedule import LeadingFraction, StepRange, UpToFraction
from ..attention.state import SOURCE, TARGET
from ..attention.step_maps import StepMaps
from ..hooks.local_blend import BlendRule, LocalBlend
from ..ore import encode_prompts
from ..prompts import edit_prompts, span_positions, word_positions
from ..samplers.virtual_inversion import VirtualInversionConfig, VirtualInversionSampler
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import MASKS_OPTIONAL, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import LCM_DREAMSHAPER, MethodInfo, register

__all__ = ["InfEditConfig", "InfEditMethod"]

BLEND_MAPS = ("step", "cumulative")


@dataclass(frozen=True)
class InfEditConfig:
    """Hyperparameters of InfEdit. Defaults: the authors' PIE-Bench script (sled-group/InfEdit
    ``run_pie_bench.py``: 12 steps, source guidance 1, target guidance 2.3, cross 0.7, self 0.7,
    thresholds 0.55 / 0.6, eta 1, the target blend word = the edited target word, no words to
    preserve). Their demo (``app_infedit.py``) defaults to 15 steps, target guidance 2, self
    0.3, thresholds 0.6 / 0.6 (cross 0.7 and source threshold 0.6 agree). Steps are the
    pipeline's ``steps`` (default 12).

    Attributes:
        cross_replace: fraction of the steps with cross-attention refinement (``(step + 1) / N
            <= cross_replace``, the code's test).
        self_replace: fraction of the steps where the target takes the source's self-attention
            queries and keys (``(step + 1) / N < self_replace``).
        source_guidance, target_guidance: classifier-free guidance of each branch.
        local_blend: blend the target with the source outside the edit region.
        target_threshold: threshold of the target words' mask (the code's ``thresh_e``); the
            threshold used is ``max(blend_temperature / sqrt(alpha_t), target_threshold)``.
        source_threshold: threshold of the preserved words' mask (``thresh_m``).
        blend_temperature: the code's ``temperature`` (0.15); 0 keeps ``target_threshold``.
        preserve_words: words of the source prompt whose regions keep the source (the demo's
            "source blend" / ``mutual`` words; PIE-Bench passes none).
        blend_maps: ``"step"``: the blend uses the current step's maps (the paper's ``M_t``);
            ``"cumulative"``: the sum over all steps so far (the code's ``AttentionStore``).
        match_replaced: also align, in each run of new target tokens, the most similar source
            token of the gap (the code's ``get_mapper``; the paper's refinement leaves new
            tokens unaligned).
        dilation_ratio: dilation of given masks (0: used as given).
        eta: share of fresh noise per step (InfEdit: 1).

    Other differences from the code: the blend also runs on the target's x0 estimate (what is
    decoded; the code decodes an unblended last-step estimate); given masks replace both
    attention masks.
    """

    cross_replace: float = 0.7
    self_replace: float = 0.7
    source_guidance: float = 1.0
    target_guidance: float = 2.3
    local_blend: bool = True
    target_threshold: float = 0.55
    source_threshold: float = 0.6
    blend_temperature: float = 0.15
    preserve_words: tuple[str, ...] = ()
    blend_maps: str = "step"
    match_replaced: bool = False
    dilation_ratio: float = 0.0
    eta: float = 1.0

    def __post_init__(self):
        check_fraction("cross_replace", self.cross_replace)
        check_fraction("self_replace", self.self_replace)
        check_number("source_guidance", self.source_guidance, 0.0)
        check_number("target_guidance", self.target_guidance, 0.0)
        check_flag("local_blend", self.local_blend)
        check_fraction("target_threshold", self.target_threshold)
        check_fraction("source_threshold", self.source_threshold)
        check_number("blend_temperature", self.blend_temperature, 0.0)
        if isinstance(self.preserve_words, str):
            raise ValueError("preserve_words must be a tuple of words, not one string")
        check_choice("blend_maps", self.blend_maps, BLEND_MAPS)
        check_flag("match_replaced", self.match_replaced)
        check_number("dilation_ratio", self.dilation_ratio, 0.0, 1.0)
        check_number("eta", self.eta, 0.0, 1.0)


@register(
    MethodInfo(
        name="infedit",
        title="InfEdit",
        paper="Xu et al., Inversion-Free Image Editing with Natural Language, CVPR 2024",
        config_class=InfEditConfig,
        default_model=LCM_DREAMSHAPER,
        default_steps=12,
        default_size=512,
        sampler="virtual inversion (LCM)",
        summary="virtual inversion + unified attention control (refine, mutual self-attention, dual-threshold blend)",
    )
)
class InfEditMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of an InfEdit edit on the virtual-inversion sampler.

    The blend's target threshold depends on ``alpha_t`` of each step's timestep, which the
    sampler writes into the call's state (``state.alpha_t``) before each step.
    """

    name: ClassVar[str] = "infedit"
    masks: ClassVar[str] = MASKS_OPTIONAL
    config_class: ClassVar[type] = InfEditConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.config.source_guidance, self.config.target_guidance)

    def sampler(self, scheduler, num_steps: int) -> VirtualInversionSampler:
        return VirtualInversionSampler(scheduler, VirtualInversionConfig(num_steps=num_steps, eta=self.config.eta))

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings, refinement and mutual self-attention processors, dual-threshold blend.

        Raises:
            PhraseNotFoundError: a ``preserve_words`` word is not in the source prompt.
        """
        cfg, state, tokenizer = self.config, ctx.state, ctx.tokenizer
        prompts = edit_prompts(tokenizer, ctx.edits, ctx.source_prompt)
        e_src, e_tgt, e_uncond = encode_prompts(ctx.text_encoder, tokenizer, [prompts.source, prompts.target, ""])
        row_embeddings = state.layout.embeddings(e_src, e_tgt, e_uncond)
        source, target = prompts.source_layout, prompts.target_layout

        length = len(target.input_ids)
        index, alphas = refinement_mapper(
            source.input_ids[: source.eos_index + 1], target.input_ids[: target.eos_index + 1], length
        )
        if cfg.match_replaced:
            index, alphas = pair_replaced_tokens(index, alphas, e_src, e_tgt, target.eos_index + 1)
        control = CrossControl(index_mapper(index), alphas, UpToFraction(cfg.cross_replace))

        extras: dict = {}
        store, hooks = None, ()
        if cfg.local_blend:
            masks = ctx.masks.at(state.latent_hw) if ctx.masks is not None else None
            if masks is None:
                preserve = tuple(
                    p for word in cfg.preserve_words for p in word_positions(tokenizer, prompts.source, word)
                )
                store = StepMaps(
                    state,
                    {TARGET: span_positions(target.spans), SOURCE: preserve},
                    accumulate=cfg.blend_maps == "cumulative",
                )
            rule = BlendRule(
                threshold=cfg.target_threshold,
                source_threshold=cfg.source_threshold,
                source_role="preserve",
                pool=False,
                reduce="max",
                temperature=cfg.blend_temperature,
            )
            # the code blends from the second step on (its callback skips i = 0)
            hooks = (LocalBlend(state, store, rule, StepRange(1), masks=masks, extras=extras),)

        record = ctx.record_attention
        recorder = AttentionRecorder(target.spans, record) if record else None
        self_window = LeadingFraction(cfg.self_replace)

        def choose(name, current):
            if is_self_attention(name):
                return MutualSelfAttentionProcessor(state, self_window)
            if is_cross_attention(name):
                return CrossAttentionControlProcessor(state, control, store, recorder)
            return current

        return EditPlan(
            row_embeddings=row_embeddings,
            choose_processor=choose,
            hooks=hooks,
            recorder=recorder,
            source_prompt=prompts.source,
            target_prompt=prompts.target,
            inversion_embedding=e_src,
            uncond_embedding=e_uncond,
            self_replace=cfg.self_replace,
            extras=extras,
        )
