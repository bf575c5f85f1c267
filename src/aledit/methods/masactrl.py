"""MasaCtrl (Cao et al., ICCV 2023): mutual self-attention control on DDIM inversion.

From step ``start_step`` on, in the self-attention layers of the decoder's two highest-resolution
levels (SD-1.x: forward-order layers 10-15 of 16, the 32x32 and 64x64 blocks at 512 px), the
target branch's queries attend to the *source* branch's keys and values, each guidance half to
its own source half (:class:`~aledit.attention.mutual_self.MutualSelfAttentionProcessor` with
``borrow=("key", "value")``). Cross-attention is left alone, so the target prompt lays out the
image (a new pose) while the source supplies its content (identity, texture).

The mask-guided variant (paper Sec. 3.3) splits that borrowing by a foreground mask: target
object queries look at source object positions only, background queries at source background
(:class:`~aledit.attention.masked_mutual.MaskedMutualSelfAttentionProcessor`). The masks are the
user's, or, when none are given, the current step's cross-attention maps of the edited phrases
(the reference code's ``MutualSelfAttentionControlMaskAuto``), stored by the cross-attention
layers in a :class:`~aledit.attention.step_maps.StepMaps`.

Real images are inverted with DDIM and the source branch is fed the inversion trajectory
(the reference code's ``ref_intermediate_latents``), on
:class:`~aledit.samplers.ddim_edit.DDIMEditSampler`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..attention.cross_control import CrossAttentionControlProcessor
from ..attention.install import is_cross_attention
from ..attention.masked_mutual import CrossAttentionMasks, GivenMasks, MaskedMutualSelfAttentionProcessor
from ..attention.mutual_self import MutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.recording import RecordingAttnProcessor
from ..attention.schedule import StepRange
from ..attention.state import SOURCE, TARGET
from ..attention.step_maps import StepMaps
from ..masks.ops import MaskError
from ..ore import encode_prompts
from ..prompts import edit_prompts
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import INVERSION_PROMPTS, MASKS_OPTIONAL, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import SD14, MethodInfo, register

__all__ = ["MasaCtrlConfig", "MasaCtrlMethod", "masactrl_layers"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class MasaCtrlConfig:
    """Hyperparameters of MasaCtrl (defaults: the paper, Sec. 4, and TencentARC/MasaCtrl's
    ``MutualSelfAttentionControl(start_step=4, start_layer=10)``, ``MutualSelfAttentionControlMask``
    / ``MaskAuto`` and its playground notebooks and gradio demo).

    Attributes:
        start_step: first denoising step (0-based) with mutual self-attention (paper S = 4).
        end_step: first step without it again; ``None`` = to the end (the code's ``step_idx``
            runs to the last step).
        start_layer: ``None`` = the self-attention layers of the decoder's two highest-resolution
            levels, which on SD-1.x are exactly forward-order layers 10-15 (paper L = 10) and
            still exist on shallower UNets; an int = forward-order index of the first layer, as
            the reference code counts (every self-attention layer from it on).
        inversion_prompt: what the DDIM inversion and the source branch are conditioned on.
            ``"source"`` (default, the paper: the source image and its prompt ``P_s``, Fig. 3);
            ``"empty"``: the empty prompt for both, as the official real-image playground and
            gradio demo do. They invert with "" at guidance 7.5, which for the empty prompt is
            guidance 1 (both halves agree), what the sampler runs.
        feed_source: replace the source latent after each step by the inversion trajectory
            (the code's ``ref_intermediate_latents``; its playground notes it "may obtain better
            reconstruction and editing results"), so the source branch reconstructs exactly.
        guidance: classifier-free guidance of both branches (the code's ``guidance_scale``).
        mask_guided: the mask-guided variant (paper Sec. 3.3). With masks given to ``edit``,
            their union is the foreground of both source and target; without, the masks come
            from the current step's 16x16 cross-attention of the edited phrases (source phrases
            on the source row, target phrases on the target row), thresholded at
            ``mask_threshold`` (the code's ``MaskAuto``; needs ``inversion_prompt="source"``).
        mask_threshold: threshold of the normalised cross-attention maps (reference 0.1).
        dilation_ratio: dilation the pipeline applies to given masks (ratio of the longer
            side); 0: the reference code uses masks as given.
    """

    start_step: int = 4
    end_step: int | None = None
    start_layer: int | None = None
    inversion_prompt: str = "source"
    feed_source: bool = True
    guidance: float = 7.5
    mask_guided: bool = False
    mask_threshold: float = 0.1
    dilation_ratio: float = 0.0

    def __post_init__(self):
        check_number("start_step", self.start_step, 0, integer=True)
        if self.end_step is not None:
            check_number("end_step", self.end_step, self.start_step + 1, integer=True)
        if self.start_layer is not None:
            check_number("start_layer", self.start_layer, 0, integer=True)
        check_choice("inversion_prompt", self.inversion_prompt, INVERSION_PROMPTS)
        check_flag("feed_source", self.feed_source)
        check_number("guidance", self.guidance, 0.0)
        check_flag("mask_guided", self.mask_guided)
        check_fraction("mask_threshold", self.mask_threshold)
        check_number("dilation_ratio", self.dilation_ratio, 0.0, 1.0)


def _up_block(name: str) -> int | None:
    """The up-block index of a ``up_blocks.{i}.…`` layer name, else ``None``."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "up_blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def masactrl_layers(attention_layers: Sequence[str], start_layer: int | None = None) -> tuple[str, ...]:
    """The self-attention layers MasaCtrl controls, in forward order.

    Args:
        attention_layers: self-attention processor names in forward order (down, mid, up).
        start_layer: ``None``: every layer of the two highest-resolution decoder levels (the
            last two up blocks that have attention; on SD-1.x ``up_blocks.2`` and ``.3`` =
            layers 10-15). An int ``L``: layers ``L, L+1, ...`` of the forward order.
    """
    layers = tuple(attention_layers)
    if not layers:
        raise ValueError("the UNet has no self-attention layers for MasaCtrl to control")
    if start_layer is not None:
        if start_layer >= len(layers):
            raise ValueError(
                f"start_layer must be below the UNet's {len(layers)} self-attention layers, got {start_layer}"
            )
        return layers[start_layer:]
    levels = sorted({b for b in map(_up_block, layers) if b is not None})
    if not levels:
        raise ValueError("the UNet has no decoder (up_blocks) self-attention layers; pass start_layer")
    chosen = set(levels[-2:])  # diffusers numbers up blocks from low to high resolution
    return tuple(n for n in layers if _up_block(n) in chosen)


@register(
    MethodInfo(
        name="masactrl",
        title="MasaCtrl",
        paper=(
            "Cao et al., MasaCtrl: Tuning-Free Mutual Self-Attention Control for Consistent Image Synthesis "
            "and Editing, ICCV 2023"
        ),
        config_class=MasaCtrlConfig,
        default_model=SD14,
        default_steps=50,
        default_size=512,
        sampler="DDIM inversion + DDIM (source fed from the inversion)",
        summary="target queries read the source's self-attention keys/values (non-rigid edits); masks optional",
    )
)
class MasaCtrlMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of a MasaCtrl edit.

    Masks are optional: only the mask-guided variant (``mask_guided=True``) uses them.
    """

    name: ClassVar[str] = "masactrl"
    masks: ClassVar[str] = MASKS_OPTIONAL
    config_class: ClassVar[type] = MasaCtrlConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.config.guidance, self.config.guidance)

    def sampler(self, scheduler, num_steps: int):
        from ..samplers.ddim_edit import DDIMEditConfig, DDIMEditSampler

        cfg = self.config
        return DDIMEditSampler(
            scheduler,
            DDIMEditConfig(num_steps=num_steps, null_text_guidance=cfg.guidance, feed_source=cfg.feed_source),
        )

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings, mutual self-attention on the chosen layers, and what the mask-guided
        variant and ``return_attention`` need on the cross-attention layers.

        Raises:
            ValueError: a ``start_layer`` past the UNet's layers, or automatic masks
                (``mask_guided`` without masks) with ``inversion_prompt="empty"``.
        """
        cfg, state = self.config, ctx.state
        prompts = edit_prompts(ctx.tokenizer, ctx.edits, ctx.source_prompt)
        empty = cfg.inversion_prompt == "empty"
        texts = [prompts.target, ""] + ([] if empty else [prompts.source])
        encoded = encode_prompts(ctx.text_encoder, ctx.tokenizer, texts)
        e_tgt, e_uncond = encoded[0], encoded[1]
        e_src = e_uncond if empty else encoded[2]
        row_embeddings = state.layout.embeddings(e_src, e_tgt, e_uncond)

        layers = masactrl_layers(ctx.attention_layers, cfg.start_layer)
        window = StepRange(cfg.start_step, cfg.end_step)
        store, masks = None, None
        if ctx.masks is not None and not cfg.mask_guided:
            logger.info("MasaCtrl uses masks only with mask_guided=True; the given masks are ignored")
        if cfg.mask_guided and ctx.masks is not None:
            masks = GivenMasks(ctx.masks.union())
        elif cfg.mask_guided:
            if empty:
                raise MaskError(
                    "mask_guided without masks derives them from the source prompt's words, but "
                    "inversion_prompt='empty' leaves the source prompt empty: pass masks or use "
                    "inversion_prompt='source'"
                )
            spans = {SOURCE: prompts.source_layout.spans, TARGET: prompts.target_layout.spans}
            tokens = {branch: [p for a, b in pairs for p in range(a, b)] for branch, pairs in spans.items()}
            # the current step's maps only: MaskAuto clears its store after every step
            store = StepMaps(state, tokens, accumulate=False, level=2)
            masks = CrossAttentionMasks(store, cfg.mask_threshold)

        def mutual():
            if masks is not None:
                return MaskedMutualSelfAttentionProcessor(state, window, masks)
            return MutualSelfAttentionProcessor(state, window, borrow=("key", "value"))

        record = ctx.record_attention
        recorder = AttentionRecorder(prompts.target_layout.spans, record) if record else None
        chosen = frozenset(layers)

        def choose(name, current):
            if name in chosen:
                return mutual()
            if is_cross_attention(name) and store is not None:
                return CrossAttentionControlProcessor(state, None, store, recorder)  # plain, records maps
            if is_cross_attention(name) and recorder is not None:
                return RecordingAttnProcessor(state, recorder, branch=TARGET)
            return current  # the UNet's own attention: MasaCtrl leaves these layers alone

        return EditPlan(
            row_embeddings=row_embeddings,
            choose_processor=choose,
            recorder=recorder,
            source_prompt="" if empty else prompts.source,
            target_prompt=prompts.target,
            inversion_embedding=e_src,
            uncond_embedding=e_uncond,
            extras={"masactrl_layers": layers},
        )
