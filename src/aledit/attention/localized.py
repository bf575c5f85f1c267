"""CPAM's localized extraction (Vo et al., Eq. 4) and the masks it shares with preservation
adaptation.

Localized extraction. In a cross-attention layer, a target row's queries inside the target mask
``M_t`` attend to the row's own prompt (the target prompt), the queries outside it to the null
prompt ``""``::

    LE(Q) = M_t * softmax(Q K_t^T * scale) V_t + (1 - M_t) * softmax(Q K_null^T * scale) V_null

so the new words cannot act outside the region (a model trained with classifier-free guidance
reconstructs what it sees under the null prompt, Sec. 3.1). Unconditional target rows already
see the null prompt, so the rule leaves them unchanged; source rows are never touched.

:class:`CPAMMasks` holds ``M_s`` and ``M_t`` for every layer resolution (``at(hw)``, the
interface of :class:`~.masked_mutual.MaskedMutualSelfAttentionProcessor`) and refines ``M_t``
from the target's cross-attention over the target words (paper, "Mask refinement"): the
cross-attention layers hand it the target's conditional row's probabilities (before localized
extraction), each layer's map (mean over heads and words) is upsampled to the latent, and at the
first layer of the next step the mean over the maps so far (this step's, or every step's since
the first) becomes ``M_t`` via :func:`~aledit.masks.refine.refine_from_attention`. Without a
given ``M_s`` the source mask comes the same way from the source row's maps of the source words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..masks.ops import downsample_any
from ..masks.refine import area_kernel, dilate_square, refine_from_attention
from .base import EditAttnProcessor, split_heads
from .recorder import AttentionRecorder
from .state import SOURCE, TARGET, EditState

__all__ = ["CPAMMasks", "LocalizedExtractionProcessor"]


class CPAMMasks:
    """Source and target masks of one CPAM edit, ``M_t`` refined step by step.

    Args:
        state: the call's state (step, latent size).
        source: ``[H, W]`` bool ``M_s`` at any resolution, or ``None``: derived from the source
            row's cross-attention over ``tokens[SOURCE]`` (then ``None`` until the first maps).
        target: ``[H, W]`` bool initial ``M_t`` (with ``source`` given); ``None`` with a derived
            source: ``M_s`` dilated by :func:`~aledit.masks.refine.area_kernel` (``dilation``).
        tokens: ``{branch: token positions}`` whose maps refine the masks (``TARGET``: the
            target words; ``SOURCE``: the source words, only for a derived ``M_s``).
        refine_start_step: first step that uses the refined ``M_t`` (paper ``T_m``); ``None``:
            ``M_t`` never changes.
        threshold: of the normalised maps (reference 0.45).
        accumulate: average the maps of every step so far (the reference code) rather than only
            the last step's.
        dilation: ratio of the derived ``M_t``'s dilation kernel to ``sqrt(area)``.
        pooling: how a mask reaches a coarser layer: ``"any"`` (a cell is in the mask when any
            pixel it covers is, aledit's rule for object masks) or ``"all"`` (when every pixel
            is: for an inverted object mask, so a cell touching the object stays outside it).

    Attributes:
        history: the refined ``M_t`` of each step that refined it, ``[h, w]`` bool at latent
            resolution (returned to the user in ``EditOutput.extras``).
    """

    def __init__(
        self,
        state: EditState,
        source: torch.Tensor | None,
        target: torch.Tensor | None,
        tokens: Mapping[str, Sequence[int]],
        refine_start_step: int | None = 1,
        threshold: float = 0.45,
        accumulate: bool = True,
        dilation: float = 0.1,
        pooling: str = "any",
    ):
        if pooling not in ("any", "all"):
            raise ValueError(f"pooling must be 'any' or 'all', got {pooling!r}")
        if source is not None and (source.ndim != 2 or target is None or target.ndim != 2):
            raise ValueError("a given source mask needs a target mask; both [H, W] bool")
        self.state = state
        self.source = None if source is None else source.bool()
        self.target = None if target is None else target.bool()
        self.tokens = {b: tuple(int(p) for p in pos) for b, pos in tokens.items() if pos}
        if self.source is None:
            self.tokens = {b: p for b, p in self.tokens.items() if b in (SOURCE, TARGET)}
        else:
            self.tokens = {b: p for b, p in self.tokens.items() if b == TARGET}
        if refine_start_step is None:
            self.tokens.pop(TARGET, None)
        self.refine_start_step = refine_start_step
        self.threshold = threshold
        self.accumulate = accumulate
        self.dilation = dilation
        self.pooling = pooling
        self.history: list[torch.Tensor] = []
        self._step = state.step
        self._sums: dict[str, torch.Tensor] = {}  # running sums of [h, w] latent maps
        self._counts: dict[str, int] = {}
        self._refined: dict[str, torch.Tensor] = {}  # latest mask per branch, latent resolution
        self._pair = False  # this step's (M_s, M_t); False = not computed yet
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def wants(self, branch: str) -> bool:
        """Whether ``branch``'s conditional row should hand over its maps."""
        return branch in self.tokens

    def _sync(self) -> None:
        """At the first call of a new step, turn the previous steps' maps into masks."""
        if self.state.step == self._step:
            return
        self._step = self.state.step
        for branch, total in self._sums.items():
            mask = refine_from_attention((total / self._counts[branch])[None], total.shape, self.threshold)
            self._refined[branch] = mask
            if branch == TARGET:
                self.history.append(mask.clone())
        if not self.accumulate:
            self._sums, self._counts = {}, {}
        self._pair, self._cache = False, {}

    @torch.no_grad()
    def add(self, branch: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """``probs`` ``[heads, h*w, T]``: one conditional row's probabilities at a layer of
        resolution ``hw``; kept as the mean over heads and ``branch``'s words, upsampled."""
        self._sync()
        if branch not in self.tokens:
            return
        words = probs[:, :, list(self.tokens[branch])].float().mean(dim=(0, 2)).reshape(1, 1, *hw)
        latent = F.interpolate(words, size=tuple(self.state.latent_hw), mode="nearest")[0, 0]
        self._sums[branch] = latent if branch not in self._sums else self._sums[branch] + latent
        self._counts[branch] = self._counts.get(branch, 0) + 1

    def current(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(M_s, M_t)`` of the current step at their own resolution, or ``None`` before a
        derived ``M_s`` exists. Fixed within a step."""
        self._sync()
        if self._pair is False:
            self._pair = self._compute()
        return self._pair

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        source, target = self.source, self.target
        if source is None:
            source = self._refined.get(SOURCE)
            if source is None:
                return None
            target = dilate_square(source, area_kernel(source, self.dilation))
        start = self.refine_start_step
        if start is not None and self.state.step >= start and TARGET in self._refined:
            refined = self._refined[TARGET]
            if bool(refined.any()):
                target = refined
        return source, target

    def at(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(M_s, M_t)`` at a layer of resolution ``hw``, ``[h * w]`` bool each (any-pooled),
        or ``None`` before a derived ``M_s`` exists."""
        found = self.current()
        if found is None:
            return None
        hw = tuple(hw)
        if hw not in self._cache:
            if self.pooling == "any":
                self._cache[hw] = tuple(downsample_any(m, hw).flatten() for m in found)
            else:
                self._cache[hw] = tuple((~downsample_any(~m, hw)).flatten() for m in found)
        return self._cache[hw]


class LocalizedExtractionProcessor(EditAttnProcessor):
    """Cross-attention with localized extraction on the target rows; feeds :class:`CPAMMasks`.

    Args:
        state: the call's shared state.
        masks: the edit's :class:`CPAMMasks` (or any ``at(hw)`` provider; ``wants``/``add``
            are used when present).
        null_embedding: ``[T, D]`` the null prompt's text embedding.
        extract: apply Eq. 4; ``False`` leaves the layer plain (maps are still handed over).
        recorder: collects the target row's attention maps per object, if given.
    """

    def __init__(
        self,
        state: EditState,
        masks,
        null_embedding: torch.Tensor,
        extract: bool = True,
        recorder: AttentionRecorder | None = None,
    ):
        self.state = state
        self.masks = masks
        self.null_embedding = null_embedding
        self.extract = extract
        self.recorder = recorder
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    def _null_heads(self, attn, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[heads, T, d]`` keys and values of the null prompt at this layer."""
        if self._null is None or self._null[0].device != like.device or self._null[0].dtype != like.dtype:
            embeds = self.null_embedding[None].to(attn.to_k.weight.device, attn.to_k.weight.dtype)
            if attn.norm_cross:
                embeds = attn.norm_encoder_hidden_states(embeds)
            key = split_heads(attn.to_k(embeds), attn.heads)[0]
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            self._null = (key.to(like.dtype), split_heads(attn.to_v(embeds), attn.heads)[0].to(like.dtype))
        return self._null

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        if not is_cross:
            return out
        layout, hw = self.state.layout, self.state.layer_hw(query.shape[2])
        wants = getattr(self.masks, "wants", lambda branch: False)
        for branch in (TARGET, SOURCE):
            record = branch == TARGET and self.recorder is not None
            row = layout.index(branch, True)
            if row is None or not (wants(branch) or record):
                continue
            logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale  # [heads, HW, T]
            if attention_mask is not None:
                logits = logits + attention_mask[row]
            probs = logits.softmax(dim=-1)
            if wants(branch):
                self.masks.add(branch, probs, hw)
            if record:
                self.recorder.add(probs, hw)
        found = self.masks.at(hw) if self.extract else None
        if found is None:
            return out
        inside = found[1].to(query.device)[None, :, None]
        null_key, null_value = self._null_heads(attn, query)
        out = out.clone()
        for row in layout.rows_of(TARGET):
            bias = attention_mask[row] if attention_mask is not None else None
            outside = F.scaled_dot_product_attention(query[row], null_key, null_value, attn_mask=bias, scale=attn.scale)
            out[row] = torch.where(inside, out[row], outside)
        return out
