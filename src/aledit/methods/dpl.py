"""Dynamic Prompt Learning (Wang et al., NeurIPS 2023): Prompt-to-Prompt on tokens learned per
step so that each noun's cross-attention covers its own object.

The nouns are the edited objects' source phrases (every token of a phrase is learned) and,
optionally, ``extra_nouns`` of a fuller ``source_prompt``. The sampler
(:class:`~aledit.samplers.dpl_inversion.DPLEditSampler`) DDIM-inverts the image, finds the
background from self-attention clusters (section 3.3), then at every denoising step learns the
tokens on the losses of :mod:`aledit.dpl` and runs null-text inversion with them. The edit is
:class:`~aledit.methods.p2p.P2PMethod`'s plan (cross-attention control, self-attention
replacement, local blend) with the learned embedding of each step on the source's conditional
row. With ``max_iterations=0`` and ``null_text=False`` it is P2P with the same settings,
bit for bit.

Paper defaults for the edit: cross-attention replaced for 40 of 50 steps (0.8), self-attention
for 20 (0.4), only in layers of at most 16x16 queries, local blend threshold 0.3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..dpl import REDUCTIONS
from ..prompts import PhraseNotFoundError, edit_prompts, layout_prompt
from ..validation import check_choice, check_flag, check_number
from .base import MASKS_OPTIONAL, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .p2p import MODES, P2PConfig, P2PMethod
from .registry import SD14, MethodInfo, register

__all__ = ["DPLConfig", "DPLMethod"]


@dataclass(frozen=True)
class DPLConfig:
    """Hyperparameters of DPL (paper section 3.2 and 4; numbers the paper leaves to its
    supplement come from the authors' ``DPL.sh``).

    Attributes:
        mode, cross_replace, self_replace, local_blend, blend_threshold, start_blend,
        reweight, guidance, self_max_tokens, cross_replace_words, dilation_ratio: the P2P edit
            (:class:`~aledit.methods.p2p.P2PConfig`); DPL: word swap where the token counts
            agree (``auto``), cross 0.8, self 0.4, maps of at most 16x16, blend 0.3, no reweight.
        null_text: interleave null-text inversion (Algorithm 1); ``False``: learn the tokens on
            the DDIM inversion's trajectory and edit without NTI.
        null_text_inner_steps: NTI's Adam iterations per step (Mokady et al.: 10; the DPL code
            runs 51 with no early stop: ``null_text_inner_steps=51, null_text_early_stop=False``).
        null_text_early_stop: stop NTI's iterations at the shared loss threshold.
        max_iterations: token iterations per step, at most (21); 0 learns nothing.
        lr, weight_decay: AdamW on the tokens (1e-3, 0.01: torch's defaults, as in the code).
        at_weight, dj_weight, bg_weight: loss weights of Eq. 9 (1, 0.05, 0.05).
        at_alpha, at_beta, dj_alpha, dj_beta, bg_alpha, bg_beta: thresholds
            ``beta exp(-i / alpha)`` (Eq. 10) at step ``i``; the code's: L_at (25, 0.3),
            L_dj (25, 0.9), L_bg (50, 0.7).
        reduction: ``"mean"`` (code: mean over pairs / nouns, what the thresholds were tuned
            on) or ``"sum"`` (Eqs. 6, 7).
        smoothing_sigma: L_at's 3x3 Gaussian (0.5; the code's kernel is sigma 0.707).
        attention_level: UNet level of the learned maps, ``latent / 2**level`` (16x16 at 512).
        n_clusters, cluster_threshold: self-attention clusters and agreement threshold of the
            background map (5, 0.2; section 3.3).
        extra_nouns: further words of ``source_prompt`` whose tokens are learned too.
        gradient_checkpointing: recompute the UNet's activations in the token learning's
            backward pass (memory for SD at 512 on a GPU).
    """

    mode: str = "auto"
    cross_replace: float = 0.8
    self_replace: float = 0.4
    local_blend: bool = True
    blend_threshold: float = 0.3
    start_blend: float = 0.2
    reweight: float = 1.0
    guidance: float = 7.5
    self_max_tokens: int = 16 * 16
    cross_replace_words: tuple[str, ...] = ()
    dilation_ratio: float = 0.0
    null_text: bool = True
    null_text_inner_steps: int = 10
    null_text_early_stop: bool = True
    max_iterations: int = 21
    lr: float = 1e-3
    weight_decay: float = 0.01
    at_weight: float = 1.0
    dj_weight: float = 0.05
    bg_weight: float = 0.05
    at_alpha: float = 25.0
    at_beta: float = 0.3
    dj_alpha: float = 25.0
    dj_beta: float = 0.9
    bg_alpha: float = 50.0
    bg_beta: float = 0.7
    reduction: str = "mean"
    smoothing_sigma: float = 0.5
    attention_level: int = 2
    n_clusters: int = 5
    cluster_threshold: float = 0.2
    extra_nouns: tuple[str, ...] = ()
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        self.p2p_config()  # the edit's settings, checked by P2PConfig
        check_flag("null_text", self.null_text)
        check_number("null_text_inner_steps", self.null_text_inner_steps, 0, integer=True)
        check_flag("null_text_early_stop", self.null_text_early_stop)
        check_choice("reduction", self.reduction, REDUCTIONS)
        if isinstance(self.extra_nouns, str):
            raise ValueError("extra_nouns must be a tuple of words, not one string")
        self.settings()  # the learning's settings, checked by DPLSettings

    def p2p_config(self) -> P2PConfig:
        return P2PConfig(
            mode=self.mode,
            cross_replace=self.cross_replace,
            self_replace=self.self_replace,
            local_blend=self.local_blend,
            blend_threshold=self.blend_threshold,
            start_blend=self.start_blend,
            reweight=self.reweight,
            guidance=self.guidance,
            null_text=self.null_text,
            self_max_tokens=self.self_max_tokens,
            cross_replace_words=self.cross_replace_words,
            dilation_ratio=self.dilation_ratio,
        )

    def settings(self):
        from ..samplers.dpl_inversion import DPLSettings

        return DPLSettings(
            max_iterations=self.max_iterations,
            lr=self.lr,
            weight_decay=self.weight_decay,
            weights=(self.at_weight, self.dj_weight, self.bg_weight),
            at_threshold=(self.at_alpha, self.at_beta),
            dj_threshold=(self.dj_alpha, self.dj_beta),
            bg_threshold=(self.bg_alpha, self.bg_beta),
            reduction=self.reduction,
            smoothing_sigma=self.smoothing_sigma,
            attention_level=self.attention_level,
            self_attention_level=max(0, self.attention_level - 1),
            n_clusters=self.n_clusters,
            cluster_threshold=self.cluster_threshold,
            gradient_checkpointing=self.gradient_checkpointing,
        )

    def null_text_config(self):
        from ..samplers.ddim import NullTextConfig

        if not self.null_text:
            return None
        if self.null_text_early_stop:
            return NullTextConfig(guidance_scale=self.guidance, inner_steps=self.null_text_inner_steps)
        return NullTextConfig(
            guidance_scale=self.guidance,
            inner_steps=self.null_text_inner_steps,
            early_stop_epsilon=0.0,
            early_stop_growth=0.0,
        )


def noun_spans(tokenizer, source: str, edited: tuple[tuple[int, int], ...], extra: tuple[str, ...]):
    """Token spans of the nouns DPL learns: the edited phrases' spans, then ``extra`` words'
    first occurrences in ``source``, sorted; overlapping spans are an error."""
    spans = list(edited)
    for word in extra:
        try:
            spans.append(layout_prompt(tokenizer, source, [word]).spans[0])
        except PhraseNotFoundError:
            raise PhraseNotFoundError(
                f"extra noun {word!r} is not in the source prompt {source!r}; pass words of --source-prompt"
            ) from None
    spans = sorted(set(spans))
    for (a0, b0), (a1, _) in zip(spans, spans[1:]):
        if a1 < b0:
            raise ValueError(f"DPL nouns overlap in {source!r}: token spans {spans}; name each object once")
    return tuple(spans)


@register(
    MethodInfo(
        name="dpl",
        title="Dynamic Prompt Learning",
        paper=(
            "Wang et al., Dynamic Prompt Learning: Addressing Cross-Attention Leakage for Text-Based "
            "Image Editing, NeurIPS 2023"
        ),
        config_class=DPLConfig,
        default_model=SD14,
        default_steps=50,
        default_size=512,
        sampler="DDIM inversion + per-step token learning interleaved with null-text inversion",
        summary="learns per-step noun tokens whose cross-attention avoids other objects and background; edits with P2P",
    )
)
class DPLMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of a DPL edit: P2P's plan plus the prompt whose noun tokens
    the sampler learns (``plan.sampler_inputs``)."""

    name: ClassVar[str] = "dpl"
    masks: ClassVar[str] = MASKS_OPTIONAL
    config_class: ClassVar[type] = DPLConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.config.guidance, self.config.guidance)

    def sampler(self, scheduler, num_steps: int):
        from ..samplers.dpl_inversion import DPLEditSampler

        cfg = self.config
        return DPLEditSampler(scheduler, num_steps, cfg.settings(), cfg.null_text_config())

    def plan(self, ctx: MethodContext) -> EditPlan:
        """P2P's plan with the dynamic prompt of the source's nouns."""
        from ..samplers.dpl_inversion import DynamicPrompt

        cfg = self.config
        plan = P2PMethod(cfg.p2p_config()).plan(ctx)
        prompts = edit_prompts(ctx.tokenizer, ctx.edits, ctx.source_prompt)
        spans = noun_spans(ctx.tokenizer, prompts.source, prompts.source_layout.spans, cfg.extra_nouns)
        prompt = DynamicPrompt(
            text_encoder=ctx.text_encoder,
            input_ids=torch.tensor([prompts.source_layout.input_ids]),
            spans=spans,
            embedding=plan.inversion_embedding,
        )
        return dataclasses.replace(plan, sampler_inputs=prompt)
