"""ALE-Edit: ORE + RGB-CAM + BB on the virtual-inversion sampler with mutual self-attention.

Each part can be switched off on its own (the paper's ablation, Table 13):

* ORE off: the source and target rows see the plain base embeddings, and RGB-CAM (if on) takes
  its values from ``e_base`` for every object, so only its masking acts.
* ORE on, RGB-CAM off: the target row is conditioned on ``e'_base`` (keys and values).
* RGB-CAM on: the target row's keys come from ``e_base``; values from ``e'_base`` / ``e'_Oi``.
* BB off: no latent hook.

The source row is conditioned on the source prompt's ``e'_base`` when ORE is on (as the
authors' code does), on ``e_base`` otherwise.

``preset="paper"`` (default) follows the paper; ``preset="authors"`` reproduces the authors'
code (ml-postech/ALE) in every place where the two differ (:data:`ALE_PRESETS`; each choice is
also an option of its own, ``docs/ale_presets.md`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch

from ..attention.install import is_cross_attention, is_self_attention
from ..attention.mutual_self import MutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.region_cross import RegionGuidance, RegionGuidedCrossAttentionProcessor
from ..edits import self_replace_for
from ..hooks.background_blend import BB_MASKS, BackgroundBlend, background_region
from ..masks.ops import MASK_RESIZES
from ..ore import ORE_INDEXINGS, ORE_ZEROINGS, encode_prompts, restrict_embeddings
from ..prompts import edit_prompts, layout_prompt
from ..samplers.virtual_inversion import VirtualInversionConfig, VirtualInversionSampler
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import MASKS_REQUIRED, SOURCE_LATENTS, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import LCM_DREAMSHAPER, MethodInfo, register

__all__ = ["ALEConfig", "ALEImplementation", "ALEMethod", "ALE_PRESETS", "BB_TIMINGS"]

# When background blending acts: "eq4" after every step, on x_t and on the decoded x0 estimate;
# "authors" after every step but the first, on x_t only (the decoded x0 is never blended).
BB_TIMINGS = ("eq4", "authors")


@dataclass(frozen=True)
class ALEImplementation:
    """The choices where the ALE paper and the authors' code differ (``docs/ale_presets.md``).

    Attributes:
        bb_mask: background-blend region at latent size, ``"any-pool"`` (paper) or
            ``"multiscale-nearest"`` (code), see :func:`~aledit.hooks.background_region`.
        bb_timing: ``"eq4"`` (paper) or ``"authors"`` (code), see :data:`BB_TIMINGS`.
        cam_mask: RGB-CAM masks at each layer's size, ``"any-pool"`` (paper) or ``"nearest"``.
        source_latent: ``"mode"`` of the VAE posterior or a ``"sample"`` from the seed's generator.
        paired_uncond: source unconditional row whenever the target has one (code), see
            :class:`~aledit.methods.base.Guidance`.
        ore_indexing, ore_zeroing: ORE's ``e'_base`` indexing and ``e'_Oi`` zeroing, see
            :func:`~aledit.ore.restrict_embeddings`.
    """

    bb_mask: str
    bb_timing: str
    cam_mask: str
    source_latent: str
    paired_uncond: bool
    ore_indexing: str
    ore_zeroing: str


ALE_PRESETS = {
    "paper": ALEImplementation(
        bb_mask="any-pool",
        bb_timing="eq4",
        cam_mask="any-pool",
        source_latent="mode",
        paired_uncond=False,
        ore_indexing="own",
        ore_zeroing="other-objects",
    ),
    "authors": ALEImplementation(
        bb_mask="multiscale-nearest",
        bb_timing="authors",
        cam_mask="nearest",
        source_latent="sample",
        paired_uncond=True,
        ore_indexing="base-positions",
        ore_zeroing="all-but-own",
    ),
}

_CHOICES = {
    "bb_mask": BB_MASKS,
    "bb_timing": BB_TIMINGS,
    "cam_mask": MASK_RESIZES,
    "source_latent": SOURCE_LATENTS,
    "ore_indexing": ORE_INDEXINGS,
    "ore_zeroing": ORE_ZEROINGS,
}


@dataclass(frozen=True)
class ALEConfig:
    """Hyperparameters of ALE-Edit (defaults: paper appendix D and the authors' code).

    Attributes:
        ore, rgb_cam, background_blend: switch each part on or off.
        self_replace: fraction of steps where the target takes the source's self-attention
            queries and keys; ``None`` picks it from the edit types (1.0 color, 0.5 object,
            color+object and object+material, 0.6 material).
        source_guidance, target_guidance: classifier-free guidance scale of each branch.
        guidance: ``"cfg"`` runs unconditional rows (InfEdit, the paper); ``"embedded"`` feeds
            LCM's guidance embedding instead (guidance-distilled UNets only, no extra rows).
        dilation_ratio: mask dilation as a ratio of the image's longer side (paper 0.01 = 7 px
            at 768; the authors' code uses 0.04).
        masked_logit: added to an object token's logit outside its mask.
        eta: share of fresh noise per step.
        preset: ``"paper"`` or ``"authors"``: the :class:`ALEImplementation` used where the
            paper and the authors' code differ (:data:`ALE_PRESETS`).
        bb_mask, bb_timing, cam_mask, source_latent, paired_uncond, ore_indexing, ore_zeroing:
            override one choice of the preset (``None``: the preset's); see
            :class:`ALEImplementation`.
    """

    ore: bool = True
    rgb_cam: bool = True
    background_blend: bool = True
    self_replace: float | None = None
    source_guidance: float = 1.0
    target_guidance: float = 2.0
    guidance: str = "cfg"
    dilation_ratio: float = 0.01
    masked_logit: float = -100.0
    eta: float = 1.0
    preset: str = "paper"
    bb_mask: str | None = None
    bb_timing: str | None = None
    cam_mask: str | None = None
    source_latent: str | None = None
    paired_uncond: bool | None = None
    ore_indexing: str | None = None
    ore_zeroing: str | None = None

    def __post_init__(self):
        if self.guidance not in ("cfg", "embedded"):
            raise ValueError(f"guidance must be 'cfg' or 'embedded', got {self.guidance!r}")
        if self.self_replace is not None:
            check_fraction("self_replace", self.self_replace)
        check_number("source_guidance", self.source_guidance, 0.0)
        check_number("target_guidance", self.target_guidance, 0.0)
        check_number("dilation_ratio", self.dilation_ratio, 0.0, 1.0)
        check_number("masked_logit", self.masked_logit, None, 0.0)
        check_number("eta", self.eta, 0.0, 1.0)
        check_choice("preset", self.preset, tuple(ALE_PRESETS))
        for name, choices in _CHOICES.items():
            if getattr(self, name) is not None:
                check_choice(name, getattr(self, name), choices)
        if self.paired_uncond is not None:
            check_flag("paired_uncond", self.paired_uncond)

    @property
    def implementation(self) -> ALEImplementation:
        """The preset's choices with this config's overrides applied."""
        overrides = {
            f.name: getattr(self, f.name) for f in fields(ALEImplementation) if getattr(self, f.name) is not None
        }
        return replace(ALE_PRESETS[self.preset], **overrides)


@register(
    MethodInfo(
        name="ale",
        title="ALE-Edit",
        paper="Mun et al., Addressing Attribute Leakages in Diffusion-based Image Editing without Training",
        config_class=ALEConfig,
        default_model=LCM_DREAMSHAPER,
        default_steps=15,
        default_size=768,
        sampler="virtual inversion (LCM)",
        summary="ORE + RGB-CAM + background blending; needs a mask per object",
    )
)


class ALEMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of an ALE edit on the virtual-inversion sampler."""

    name: ClassVar[str] = "ale"
    masks: ClassVar[str] = MASKS_REQUIRED
    config_class: ClassVar[type] = ALEConfig

    @property
    def guidance(self) -> Guidance:
        cfg = self.config
        return Guidance(
            cfg.source_guidance,
            cfg.target_guidance,
            embedded=cfg.guidance == "embedded",
            paired_uncond=cfg.implementation.paired_uncond,
        )

    def sampler(self, scheduler, num_steps: int) -> VirtualInversionSampler:
        return VirtualInversionSampler(scheduler, VirtualInversionConfig(num_steps=num_steps, eta=self.config.eta))

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings (ORE), RGB-CAM and mutual self-attention processors, BB hook.

        The source prompt defaults to the phrases joined with " and " (appendix D); a fuller
        ``ctx.source_prompt`` must contain every source phrase, and the target prompt replaces
        each by its target.
        """
        cfg = self.config
        impl = cfg.implementation
        edits, masks, state, tokenizer = ctx.edits, ctx.masks, ctx.state, ctx.tokenizer
        self_replace = cfg.self_replace if cfg.self_replace is not None else self_replace_for(edits)
        prompts = edit_prompts(tokenizer, edits, ctx.source_prompt)
        src_phrases, tgt_phrases = prompts.source_phrases, prompts.target_phrases

        # One batched text-encoder call: base prompts, object phrases (ORE only), empty prompt.
        texts = [prompts.target, prompts.source, ""]
        if cfg.ore:
            texts += list(tgt_phrases) + list(src_phrases)
        encoded = encode_prompts(ctx.text_encoder, tokenizer, texts)
        e_tgt, e_src, e_uncond = encoded[0], encoded[1], encoded[2]
        n = len(edits)
        if cfg.ore:
            ore_choices = dict(base_indexing=impl.ore_indexing, zeroing=impl.ore_zeroing)
            tgt_ore = restrict_embeddings(
                e_tgt,
                encoded[3 : 3 + n],
                prompts.target_layout,
                [layout_prompt(tokenizer, p, [p]) for p in tgt_phrases],
                **ore_choices,
            )
            src_ore = restrict_embeddings(
                e_src,
                encoded[3 + n :],
                prompts.source_layout,
                [layout_prompt(tokenizer, p, [p]) for p in src_phrases],
                **ore_choices,
            )
            source_cond = src_ore.base_restricted
            values = torch.cat([tgt_ore.base_restricted[None], tgt_ore.objects])
        else:
            source_cond = e_src
            values = e_tgt[None].expand(n + 1, -1, -1)
        if cfg.rgb_cam:
            target_cond = e_tgt  # keys from the unmodified base embedding (Algorithm 2, line 2)
        else:
            target_cond = values[0]
        row_embeddings = state.layout.embeddings(source_cond, target_cond, e_uncond)

        guidance = (
            RegionGuidance(
                masks.masks,
                prompts.target_layout.spans,
                values,
                masked_logit=cfg.masked_logit,
                mask_resize=impl.cam_mask,
            )
            if cfg.rgb_cam
            else None
        )
        record = ctx.record_attention
        recorder = AttentionRecorder(prompts.target_layout.spans, record) if record else None

        def choose(name, current):
            if is_self_attention(name):
                return MutualSelfAttentionProcessor(state, self_replace)
            if is_cross_attention(name):
                return RegionGuidedCrossAttentionProcessor(state, guidance, recorder)
            return current

        hooks = ()
        if cfg.background_blend:
            background = background_region(masks.masks, state.latent_hw, impl.bb_mask)
            if impl.bb_timing == "eq4":
                hooks = (BackgroundBlend(background),)
            else:
                hooks = (BackgroundBlend(background, start_step=1, blend_x0=False),)
        return EditPlan(
            row_embeddings=row_embeddings,
            choose_processor=choose,
            hooks=hooks,
            recorder=recorder,
            source_prompt=prompts.source,
            target_prompt=prompts.target,
            inversion_embedding=e_src,
            uncond_embedding=e_uncond,
            self_replace=self_replace,
            source_latent=impl.source_latent,
        )
