"""Prompt-to-Prompt cross-attention control: the target branch's text-conditioned row takes the
source's cross-attention probabilities, mapped from source tokens to target tokens.

For a layer with source and target probabilities ``M_src``, ``M_tgt`` ``[heads, HW, T]`` (the
conditional rows; unconditional rows are never edited), at step ``t``::

    mapped = M_src @ mapper                               # [heads, HW, T], target token order
    edit   = (mapped * alphas + M_tgt * (1 - alphas)) * equalizer
    M      = edit * a_t + M_tgt * (1 - a_t)

* ``mapper [T, T]``: weight of source token ``s`` in target token ``j``.
  *Replace* (word swap, :func:`replacement_mapper`): tokens outside the edited phrases map one to
  one, an edited phrase maps to its replacement (one to one when both have as many tokens, else
  every source token spreads ``1 / len(target phrase)`` onto each target token, as P2P's
  ``get_replacement_mapper`` does). *Refine* (added words, :func:`refinement_mapper`): a global
  alignment of the token ids; each aligned target token takes its source token's map.
* ``alphas [T]``: 1 where a target token has a source counterpart, 0 where it keeps its own map
  (refine's new words; all ones for replace).
* ``equalizer [T]``: P2P's re-weighting, ``c`` on chosen target tokens, 1 elsewhere, applied to
  the edited map without renormalisation (as P2P's ``AttentionReweight``, chained after replace
  or refine, so it acts inside the cross-replace window only).
* ``a_t [T]``: 1 inside the cross-replace window, else 0; per-word windows may override the
  default window for some target tokens (P2P's ``cross_replace_steps={"default_": .., word: ..}``).

Probabilities are computed explicitly (softmax of ``Q K^T * scale``) only for the two conditional
rows and only where something needs them (an active edit, a map store, a recorder); every other
row and layer runs ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import EditAttnProcessor
from .recorder import AttentionRecorder
from .state import SOURCE, TARGET, EditState

__all__ = [
    "CrossAttentionControlProcessor",
    "CrossControl",
    "align_tokens",
    "index_mapper",
    "pair_replaced_tokens",
    "prompt_control",
    "refinement_mapper",
    "replacement_mapper",
    "token_equalizer",
]

_TARGET_GAP, _SOURCE_GAP, _MATCH = 1, 2, 3


def align_tokens(source: Sequence[int], target: Sequence[int]) -> tuple[int | None, ...]:
    """Global alignment of two token-id sequences (Needleman-Wunsch; match +1, mismatch -1,
    gap 0, the scores of P2P's ``seq_aligner``).

    Returns, for each target position, the source position it is aligned with, or ``None``.
    A mismatch never scores above two gaps, so aligned tokens always have equal ids. Ties are
    broken as P2P's traceback does: leave the target token unaligned, then skip a source token,
    then match.
    """
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[_TARGET_GAP] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        move[i][0] = _SOURCE_GAP
        for j in range(1, m + 1):
            left = score[i][j - 1]
            up = score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = _TARGET_GAP if best == left else _SOURCE_GAP if best == up else _MATCH
    aligned: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 or j > 0:
        step = move[i][j]
        if step == _MATCH:
            aligned[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == _TARGET_GAP:
            j -= 1
        else:
            i -= 1
    return tuple(aligned)


def refinement_mapper(source_ids: Sequence[int], target_ids: Sequence[int], length: int = 77):
    """P2P's refinement mapper from the *real* tokens of two prompts (BOS .. EOS, no padding).

    Returns:
        index: ``[length]`` long, the source position whose map target position ``j`` takes
            (``j`` itself where there is none; positions after the target's EOS map to the same
            position, as in P2P).
        alphas: ``[length]`` float, 0 for target tokens without a source counterpart, else 1.
    """
    if len(source_ids) > length or len(target_ids) > length:
        raise ValueError(f"token sequences longer than {length}: {len(source_ids)}, {len(target_ids)}")
    index = torch.arange(length)
    alphas = torch.ones(length)
    for j, i in enumerate(align_tokens(source_ids, target_ids)):
        if i is None:
            alphas[j] = 0.0
        else:
            index[j] = i
    return index, alphas


def pair_replaced_tokens(
    index: torch.Tensor,
    alphas: torch.Tensor,
    source_embeddings: torch.Tensor,
    target_embeddings: torch.Tensor,
    target_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfEdit's code extension of refine (not in its paper): in every run of unaligned target
    tokens, the (target, source) token pair of the gap with the highest cosine similarity of their
    text-encoder outputs is aligned too, so a swapped word ("cat" -> "dog") takes the source
    word's map. The source gap lies between the source tokens aligned just before and just
    after the run; an insertion (empty gap) stays unaligned.

    Args:
        index, alphas: :func:`refinement_mapper`'s output ``[T]``.
        source_embeddings, target_embeddings: ``[T, D]`` encoded prompts.
        target_length: number of real target tokens (BOS .. EOS).

    Returns:
        new ``(index, alphas)``. (InfEdit's ``seq_aligner.get_mapper`` indexes the source
        encoding at target positions and vice versa; here each side is read at its own positions.)
    """
    index, alphas = index.clone(), alphas.clone()
    j = 1
    while j < target_length:
        if alphas[j] != 0:
            j += 1
            continue
        start = j
        while j < target_length and alphas[j] == 0:
            j += 1
        first = int(index[start - 1]) + 1
        stop = int(index[j]) if j < target_length else first
        if stop > first:
            src = F.normalize(source_embeddings[first:stop].float(), dim=-1)  # [S, D]
            tgt = F.normalize(target_embeddings[start:j].float(), dim=-1)  # [R, D]
            sim = tgt @ src.T  # [R, S]
            best = int(sim.argmax())
            t, s = start + best // sim.shape[1], first + best % sim.shape[1]
            index[t], alphas[t] = s, 1.0
    return index, alphas


def index_mapper(index: torch.Tensor) -> torch.Tensor:
    """``[T]`` source index per target position -> ``[T, T]`` one-hot mapper (source, target)."""
    length = index.shape[0]
    mapper = torch.zeros(length, length)
    mapper[index, torch.arange(length)] = 1.0
    return mapper


def replacement_mapper(
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    source_spans: Sequence[tuple[int, int]],
    target_spans: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """P2P's word-swap mapper ``[T, T]`` (source position, target position) for two padded
    prompts of ``T`` tokens that differ only in the phrases at ``source_spans`` /
    ``target_spans`` (one pair per edit, in order).

    Tokens between the phrases map one to one; a phrase maps to its replacement one to one when
    both have as many tokens, else every source token gives ``1 / len(target phrase)`` to each
    target token (P2P's ratio rule). After the last phrase, positions map with the offset the
    phrases left (clamped to the last position; P2P maps the tail position to the same position,
    which is the same when the token counts agree).

    Raises:
        ValueError: the prompts differ outside the phrases, or the spans do not pair up.
    """
    length = len(target_ids)
    if len(source_ids) != length:
        raise ValueError(f"prompts of different lengths: {len(source_ids)} and {length} tokens")
    if len(source_spans) != len(target_spans):
        raise ValueError(f"{len(source_spans)} source phrases but {len(target_spans)} target phrases")
    mapper = torch.zeros(length, length)
    s = t = 0
    for (s0, s1), (t0, t1) in zip(source_spans, target_spans):
        if s0 - s != t0 - t or list(source_ids[s:s0]) != list(target_ids[t:t0]):
            raise ValueError("replace mode needs prompts that differ only in the edited phrases; use refine")
        for k in range(s0 - s):
            mapper[s + k, t + k] = 1.0
        if s1 - s0 == t1 - t0:
            for k in range(s1 - s0):
                mapper[s0 + k, t0 + k] = 1.0
        else:
            mapper[s0:s1, t0:t1] = 1.0 / (t1 - t0)
        s, t = s1, t1
    for k in range(length - t):
        mapper[min(s + k, length - 1), t + k] = 1.0
    return mapper


def token_equalizer(positions: Sequence[int], factor: float, length: int = 77) -> torch.Tensor:
    """P2P's equalizer ``[length]``: ``factor`` at ``positions``, 1 elsewhere."""
    equalizer = torch.ones(length)
    equalizer[list(positions)] = float(factor)
    return equalizer


def prompt_control(source, target, mode: str, window, token_windows=(), reweight: float = 1.0) -> "CrossControl":
    """The :class:`CrossControl` of two prompt layouts (:class:`~aledit.prompts.PromptLayout`:
    ``input_ids``, ``spans`` of the edited phrases, ``eos_index``).

    Args:
        mode: ``"replace"`` (:func:`replacement_mapper`) or ``"refine"`` (:func:`refinement_mapper`).
        window: the default cross-replace window.
        token_windows: ``((target positions, window), ...)`` per-word windows.
        reweight: factor on the target phrases' tokens (1: no re-weighting).
    """
    length = len(target.input_ids)
    if mode == "replace":
        mapper = replacement_mapper(source.input_ids, target.input_ids, source.spans, target.spans)
        alphas = torch.ones(length)
    elif mode == "refine":
        index, alphas = refinement_mapper(
            source.input_ids[: source.eos_index + 1], target.input_ids[: target.eos_index + 1], length
        )
        mapper = index_mapper(index)
    else:
        raise ValueError(f"mode must be 'replace' or 'refine', got {mode!r}")
    equalizer = None
    if reweight != 1.0:
        positions = [p for start, stop in target.spans for p in range(start, stop)]
        equalizer = token_equalizer(positions, reweight, length)
    return CrossControl(mapper, alphas, window, tuple(token_windows), equalizer)


@dataclass(frozen=True, eq=False)
class CrossControl:
    """A frozen description of the edit of the target's conditional cross-attention row.

    Attributes:
        mapper: ``[T, T]`` weight of source token ``s`` in target token ``j``.
        alphas: ``[T]`` 1 = the target token takes the mapped source map, 0 = keeps its own.
        window: the default cross-replace window, ``active(step, num_steps)``
            (:mod:`aledit.attention.schedule`).
        token_windows: ``((target positions, window), ...)``: windows that replace the default
            one for some target tokens (P2P's per-word ``cross_replace_steps``).
        equalizer: ``[T]`` re-weighting factors of the target tokens, or ``None`` (all 1).
    """

    mapper: torch.Tensor
    alphas: torch.Tensor
    window: object
    token_windows: tuple[tuple[tuple[int, ...], object], ...] = ()
    equalizer: torch.Tensor | None = None

    def __post_init__(self):
        t = self.alphas.shape[0]
        if self.mapper.shape != (t, t):
            raise ValueError(f"mapper must be [{t}, {t}] for {t} alphas, got {list(self.mapper.shape)}")
        if self.equalizer is not None and self.equalizer.shape != (t,):
            raise ValueError(f"equalizer must have {t} entries, got {list(self.equalizer.shape)}")

    def step_alphas(self, step: int, num_steps: int) -> torch.Tensor:
        """``a_t`` ``[T]``: 1 for target tokens whose window is active at ``step``, else 0."""
        a = torch.full_like(self.alphas, float(self.window.active(step, num_steps)))
        for positions, window in self.token_windows:
            a[list(positions)] = float(window.active(step, num_steps))
        return a

    def apply(self, source: torch.Tensor, target: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The controlled target probabilities ``[..., HW, T]`` from the source's and the
        target's (``[..., HW, T]`` each) and the step's ``a`` ``[T]`` (:meth:`step_alphas`)."""
        mapper, alphas = self.mapper.to(target), self.alphas.to(target)
        edit = torch.matmul(source, mapper) * alphas + target * (1 - alphas)
        if self.equalizer is not None:
            edit = edit * self.equalizer.to(target)
        a = a.to(target)
        return edit * a + target * (1 - a)


class CrossAttentionControlProcessor(EditAttnProcessor):
    """Cross-attention with P2P control of the target's conditional row.

    Args:
        state: the call's shared state (layout and step).
        control: the edit, or ``None`` for plain attention (recording only).
        store: a :class:`~aledit.attention.step_maps.StepMaps` kept for a local blend: it is
            given the source row's and the *controlled* target row's probabilities (what P2P's
            ``AttentionStore`` holds, since its controller edits the stored tensor in place).
        recorder: collects the controlled target row's maps per object (``return_attention``).

    While the edit is active, both conditional rows get ``probs @ V`` (not the fused kernel), so
    identical source and target rows stay bitwise identical; storing or recording alone leaves
    every output as the fused kernel computes it.
    """

    def __init__(
        self,
        state: EditState,
        control: CrossControl | None = None,
        store=None,
        recorder: AttentionRecorder | None = None,
    ):
        self.state = state
        self.control = control
        self.store = store
        self.recorder = recorder

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        layout = self.state.layout
        src, tgt = layout.index(SOURCE, True), layout.index(TARGET, True)
        if not is_cross or src is None or tgt is None:
            return out
        a = None
        if self.control is not None:
            a = self.control.step_alphas(self.state.step, self.state.num_steps)
            if not bool(a.any()):
                a = None
        hw = self.state.layer_hw(query.shape[2])
        storing = self.store is not None and self.store.wants(hw)
        if a is None and not storing and self.recorder is None:
            return out

        rows = [src, tgt]
        logits = torch.matmul(query[rows], key[rows].transpose(-1, -2)) * attn.scale  # [2, heads, HW, T]
        if attention_mask is not None:
            logits = logits + attention_mask[rows]
        probs = logits.softmax(dim=-1)
        p_src, p_tgt = probs[0], probs[1]
        if a is not None:
            p_tgt = self.control.apply(p_src, p_tgt, a)
        if storing:
            self.store.add(SOURCE, p_src, hw)
            self.store.add(TARGET, p_tgt, hw)
        if self.recorder is not None:
            self.recorder.add(p_tgt, hw)
        if a is None:  # only watching: the layer's output stays the fused kernel's
            return out
        out = out.clone()
        out[src] = torch.matmul(p_src, value[src]).to(out.dtype)
        out[tgt] = torch.matmul(p_tgt, value[tgt]).to(out.dtype)
        return out
