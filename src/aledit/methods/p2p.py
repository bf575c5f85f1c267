"""Prompt-to-Prompt (Hertz et al., ICLR 2023) with null-text inversion (Mokady et al., CVPR 2023)
for real images.

The source image is DDIM-inverted with the source prompt, the unconditional embedding optimised
per step so that guided sampling at 7.5 retraces the inversion (null-text inversion), then both
branches denoise from the inverted noise with:

* cross-attention control on the target's conditional row (:mod:`aledit.attention.cross_control`):
  the target takes the source's maps (word swap: replace; added words: refine), optionally
  re-weighted, for the first ``cross_replace`` of the steps;
* self-attention probability replacement on the conditional row in layers of at most 32x32
  queries for the first ``self_replace`` of the steps (= borrowing the source's queries and
  keys, :class:`~aledit.attention.mutual_self.MutualSelfAttentionProcessor`);
* a local blend (:mod:`aledit.hooks.local_blend`) from the 16x16 cross maps of the edited words
  (source phrase on the source row, target phrase on the target row), or from given masks.

Step windows count as P2P does: ``int(start * N) <= step < int(end * N)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..attention.cross_control import CrossAttentionControlProcessor, prompt_control
from ..attention.install import is_cross_attention, is_self_attention
from ..attention.mutual_self import MutualSelfAttentionProcessor
from ..attention.recorder import AttentionRecorder
from ..attention.schedule import StepWindow
from ..attention.state import SOURCE, TARGET
from ..attention.step_maps import StepMaps
from ..hooks.local_blend import BlendRule, LocalBlend
from ..ore import encode_prompts
from ..prompts import edit_prompts, span_positions, word_positions
from ..validation import check_choice, check_flag, check_fraction, check_number
from .base import MASKS_OPTIONAL, ConfiguredMethod, EditPlan, Guidance, MethodContext
from .registry import SD14, MethodInfo, register

__all__ = ["P2PConfig", "P2PMethod", "parse_word_window"]

MODES = ("refine", "replace", "auto")


def parse_word_window(entry: str) -> tuple[str, StepWindow]:
    """``"word=END"`` or ``"word=START:END"`` (fractions of the steps) -> (word, window)."""
    word, sep, bounds = str(entry).rpartition("=")
    word = word.strip()
    if not sep or not word:
        raise ValueError(f"cross_replace_words entry {entry!r} must be WORD=END or WORD=START:END, e.g. 'tiger=0.8'")
    start, sep, end = bounds.partition(":")
    try:
        start_f, end_f = (float(start), float(end)) if sep else (0.0, float(start))
    except ValueError:
        raise ValueError(
            f"cross_replace_words entry {entry!r}: the window must be numbers, e.g. 'tiger=0.2:0.8'"
        ) from None
    check_fraction(f"cross_replace_words window of {word!r}", start_f)
    check_fraction(f"cross_replace_words window of {word!r}", end_f)
    if start_f > end_f:
        raise ValueError(f"cross_replace_words entry {entry!r}: start {start_f} is after end {end_f}")
    return word, StepWindow(start_f, end_f)


@dataclass(frozen=True)
class P2PConfig:
    """Hyperparameters of Prompt-to-Prompt (defaults: PIE-Bench's P2P run, cure-lab/PnPInversion
    ``run_editing_p2p.py`` + ``models/p2p_editor.py``: refine controller, cross 0.4, self 0.6,
    local blend on the blended words with P2P's thresholds (0.3, 0.3) from 20% of the steps,
    the target word re-weighted by 2, guidance 7.5, null-text inversion, 50 steps).

    Attributes:
        mode: ``"refine"`` (added or changed words: global token alignment, PIE-Bench's
            choice for every edit), ``"replace"`` (word swap: token mapper; a phrase with another
            token count spreads its maps evenly, P2P's rule) or ``"auto"`` (replace when both
            prompts have as many tokens, else refine).
        cross_replace: fraction of the steps (from the start) with cross-attention control,
            steps ``< int(cross_replace * N)`` (P2P's alphas count ``int(f * (N + 1))``, the same
            step at PIE-Bench's 0.4 of 50).
        self_replace: fraction of the steps with self-attention replacement.
        local_blend: blend the target into the source outside the edited words' region.
        blend_threshold: threshold of the normalised 16x16 word maps (P2P's ``th=(.3, .3)``).
        start_blend: fraction of the steps before the blend starts (P2P 0.2).
        reweight: factor on the target phrases' cross-attention maps inside the cross window
            (P2P's ``AttentionReweight``; PIE-Bench 2 on the target word; 1 = off). The paper
            describes re-weighting on its own for every step; the code chains it after refine
            inside the cross-replace window, as here.
        guidance: classifier-free guidance of both branches (also what null-text optimises for).
        null_text: null-text inversion (``False``: plain DDIM inversion, PIE-Bench's
            "ddim+p2p").
        self_max_tokens: self-attention is replaced only in layers with at most this many
            queries (P2P: 32 * 32).
        cross_replace_words: per-word cross windows on the target prompt, ``"word=END"`` or
            ``"word=START:END"`` (P2P's ``cross_replace_steps={"default_": .., "word": ..}``).
        dilation_ratio: dilation of given masks (0: used as given).
    """

    mode: str = "refine"
    cross_replace: float = 0.4
    self_replace: float = 0.6
    local_blend: bool = True
    blend_threshold: float = 0.3
    start_blend: float = 0.2
    reweight: float = 2.0
    guidance: float = 7.5
    null_text: bool = True
    self_max_tokens: int = 32 * 32
    cross_replace_words: tuple[str, ...] = ()
    dilation_ratio: float = 0.0

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_fraction("cross_replace", self.cross_replace)
        check_fraction("self_replace", self.self_replace)
        check_flag("local_blend", self.local_blend)
        check_fraction("blend_threshold", self.blend_threshold)
        check_fraction("start_blend", self.start_blend)
        check_number("reweight", self.reweight)
        check_number("guidance", self.guidance, 0.0)
        check_flag("null_text", self.null_text)
        check_number("self_max_tokens", self.self_max_tokens, 0, integer=True)
        if isinstance(self.cross_replace_words, str):
            raise ValueError("cross_replace_words must be a tuple of 'word=END' entries, not one string")
        for entry in self.cross_replace_words:
            parse_word_window(entry)
        check_number("dilation_ratio", self.dilation_ratio, 0.0, 1.0)


@register(
    MethodInfo(
        name="p2p",
        title="Prompt-to-Prompt",
        paper=(
            "Hertz et al., Prompt-to-Prompt Image Editing with Cross Attention Control, ICLR 2023; "
            "Mokady et al., Null-text Inversion for Editing Real Images, CVPR 2023"
        ),
        config_class=P2PConfig,
        default_model=SD14,
        default_steps=50,
        default_size=512,
        sampler="DDIM inversion + null-text inversion",
        summary="the target reuses the source's cross-attention maps; local blend from word maps or given masks",
    )
)
class P2PMethod(ConfiguredMethod):
    """Builds the :class:`EditPlan` of a Prompt-to-Prompt edit.

    Masks are optional: given masks replace the local blend's attention-derived mask.
    """

    name: ClassVar[str] = "p2p"
    masks: ClassVar[str] = MASKS_OPTIONAL
    config_class: ClassVar[type] = P2PConfig

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.config.guidance, self.config.guidance)

    def sampler(self, scheduler, num_steps: int):
        # imported here, as the other DDIM methods do, so the registry loads without the engine
        from ..samplers.ddim_edit import DDIMEditConfig, DDIMEditSampler

        cfg = self.config
        return DDIMEditSampler(
            scheduler, DDIMEditConfig(num_steps=num_steps, null_text=cfg.null_text, null_text_guidance=cfg.guidance)
        )

    def plan(self, ctx: MethodContext) -> EditPlan:
        """Row embeddings, cross-attention control, self-attention replacement, local blend.

        Raises:
            PhraseNotFoundError: a ``cross_replace_words`` word is not in the target prompt.
            ValueError: ``mode="replace"`` on prompts that differ outside the edited phrases.
        """
        cfg, state, tokenizer = self.config, ctx.state, ctx.tokenizer
        prompts = edit_prompts(tokenizer, ctx.edits, ctx.source_prompt)
        e_src, e_tgt, e_uncond = encode_prompts(ctx.text_encoder, tokenizer, [prompts.source, prompts.target, ""])
        row_embeddings = state.layout.embeddings(e_src, e_tgt, e_uncond)
        source, target = prompts.source_layout, prompts.target_layout

        mode = cfg.mode
        if mode == "auto":
            mode = "replace" if source.eos_index == target.eos_index else "refine"
        token_windows = []
        for entry in cfg.cross_replace_words:
            word, window = parse_word_window(entry)
            token_windows.append((word_positions(tokenizer, prompts.target, word), window))
        control = prompt_control(
            source, target, mode, StepWindow(0.0, cfg.cross_replace), tuple(token_windows), cfg.reweight
        )

        extras: dict = {"cross_mode": mode}
        store, hooks = None, ()
        if cfg.local_blend:
            masks = ctx.masks.at(state.latent_hw) if ctx.masks is not None else None
            if masks is None:
                store = StepMaps(
                    state, {SOURCE: span_positions(source.spans), TARGET: span_positions(target.spans)}, accumulate=True
                )
            rule = BlendRule(threshold=cfg.blend_threshold)
            hooks = (LocalBlend(state, store, rule, StepWindow(cfg.start_blend, 1.0), masks=masks, extras=extras),)

        record = ctx.record_attention
        recorder = AttentionRecorder(target.spans, record) if record else None
        self_window = StepWindow(0.0, cfg.self_replace)

        def choose(name, current):
            if is_self_attention(name):
                return MutualSelfAttentionProcessor(
                    state, self_window, borrow=("query", "key"), max_tokens=cfg.self_max_tokens, rows="conditional"
                )
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
