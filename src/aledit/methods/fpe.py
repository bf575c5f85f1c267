"""Free-Prompt-Editing (FPE; Liu et al., CVPR 2024): replace only self-attention maps.

The paper's probing analysis finds that cross-attention maps carry the source words' semantics
(swapping them, as Prompt-to-Prompt does, can make edits fail), while self-attention maps
carry the layout and shape. FPE therefore leaves cross-attention alone and, during the first 80%
of the steps and in the layers with at most 32 x 32 query positions, gives the target branch the
source branch's self-attention probabilities ``softmax(Q_s K_s^T / sqrt(d))`` (with its own
values). Since those probabilities depend only on Q and K, this is
:class:`~aledit.attention.mutual_self.MutualSelfAttentionProcessor` borrowing queries and keys,
on the conditional target row only: the reference controller (a Prompt-to-Prompt
``AttentionControl``) edits the text-conditioned half of the batch and leaves the
unconditional half as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..attention.install import is_cross_attention, is_self_attention
from ..attention.mutual_self import MutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.recording import RecordingAttnProcessor
from ..attention.schedule import StepWindow
from ..attention.state import TARGET
from ..ore import encode_prompts
from ..prompts import edit_prompts
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import INVERSION_PROMPTS, MASKS_UNUSED, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import SD15, MethodInfo, register

__all__ = ["FPEConfig", "FPEMethod"]

@dataclass(frozen=True)
class FPEConfig:
    """Hyperparameters of FPE (defaults: the paper and alibaba/EasyNLP
    ``diffusion/FreePromptEditing``: ``SelfAttentionControlEdit``, ``edit_real.ipynb``,
    ``null_text_w_FPE.ipynb``).

    Attributes:
        self_replace: fraction of the steps, from the first, in which the target takes the
            source's self-attention maps (0.8: steps ``0 .. int(0.8 N) - 1``, the code's
            ``int(num_steps * self_replace_steps)`` rule).
        max_layer_tokens: replace only in layers with at most this many query positions
            (32 * 32: at 512 px every layer but the 64 x 64 ones; the code's
            ``att_replace.shape[2] <= 32 ** 2``, an absolute count, kept as such).
        inversion_prompt: what the DDIM inversion and the source branch are conditioned on:
            ``"source"`` (default; the source prompt, as the paper's source/target prompt pairs
            and the null-text notebook use) or ``"empty"`` (the code's DDIM real-image
            notebook: "" for both, inverted at guidance 7.5, which equals guidance 1 there).
        null_text: null-text inversion after the DDIM inversion (``null_text_w_FPE.ipynb``).
        feed_source: replace the source latent after each step by the inversion trajectory
            (``edit_real.ipynb`` passes ``ref_intermediate_latents``; the null-text notebook
            does not, relying on the optimised null embeddings instead).
        guidance: classifier-free guidance of both branches (the code's ``guidance_scale``
            7.5; also what null-text inversion optimises for).
    """

    self_replace: float = 0.8
    max_layer_tokens: int = 32 * 32
    inversion_prompt: str = "source"
    null_text: bool = False
    feed_source: bool = True
    guidance: float = 7.5

    def __post_init__(self):
        check_fraction("self_replace", self.self_replace)
        check_number("max_layer_tokens", self.max_layer_tokens, 1, integer=True)
        check_choice("inversion_prompt", self.inversion_prompt, INVERSION_PROMPTS)
        check_flag("null_text", self.null_text)
        check_flag("feed_source", self.feed_source)
        check_number("guidance", self.guidance, 0.0)


@register(
    MethodInfo(
        name="fpe",
        title="Free-Prompt-Editing",
        paper=(
            "Liu et al., Towards Understanding Cross and Self-Attention in Stable Diffusion for Text-Guided "
            "Image Editing, CVPR 2024"
        ),
        config_class=FPEConfig,
        default_model=SD15,
        default_steps=50,
        default_size=512,
        sampler="DDIM inversion (optionally null-text) + DDIM",
        summary="the target takes the source's self-attention maps in the early steps; cross-attention untouched",
    )
)
class FPEMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of an FPE edit. Masks are not used."""

    name: ClassVar[str] = "fpe"
    masks: ClassVar[str] = MASKS_UNUSED
    config_class: ClassVar[type] = FPEConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.config.guidance, self.config.guidance)

    @property
    def dilation_ratio(self) -> float:
        return 0.0

    def sampler(self, scheduler, num_steps: int):
        from ..samplers.ddim_edit import DDIMEditConfig, DDIMEditSampler

        cfg = self.config
        return DDIMEditSampler(
            scheduler,
            DDIMEditConfig(
                num_steps=num_steps,
                null_text=cfg.null_text,
                null_text_guidance=cfg.guidance,
                feed_source=cfg.feed_source,
            ),
        )

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings and the self-attention map replacement on every self-attention layer
        (each decides from its query count whether it acts)."""
        cfg, state = self.config, ctx.state
        prompts = edit_prompts(ctx.tokenizer, ctx.edits, ctx.source_prompt)
        empty = cfg.inversion_prompt == "empty"
        texts = [prompts.target, ""] + ([] if empty else [prompts.source])
        encoded = encode_prompts(ctx.text_encoder, ctx.tokenizer, texts)
        e_tgt, e_uncond = encoded[0], encoded[1]
        e_src = e_uncond if empty else encoded[2]
        row_embeddings = state.layout.embeddings(e_src, e_tgt, e_uncond)

        window = StepWindow(0.0, cfg.self_replace)
        record = ctx.record_attention
        recorder = AttentionRecorder(prompts.target_layout.spans, record) if record else None

        def choose(name, current):
            if is_self_attention(name):
                return MutualSelfAttentionProcessor(
                    state, window, borrow=("query", "key"), max_tokens=cfg.max_layer_tokens, rows="conditional"
                )
            if recorder is not None and is_cross_attention(name):
                return RecordingAttnProcessor(state, recorder, branch=TARGET)
            return current  # cross-attention is never edited

        return EditPlan(
            row_embeddings=row_embeddings,
            choose_processor=choose,
            recorder=recorder,
            source_prompt="" if empty else prompts.source,
            target_prompt=prompts.target,
            inversion_embedding=e_src,
            uncond_embedding=e_uncond,
            self_replace=cfg.self_replace,
        )
