"""Base prompts and the token span of every object phrase in them.

ALE-Edit builds its prompts from the object phrases alone, joined with " and " (appendix D):
``["wolf", "moon"] -> "wolf and moon"``. Each phrase's tokens are found from the *character* span
that the construction gives it, mapped through the tokenizer's offsets, so repeated words
("red apple and red cheese"), multi-token words ("pink-colored") and phrases that contain one
another ("apple and apple pie") are all located exactly, never by searching for token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PromptError",
    "PromptTooLongError",
    "PhraseNotFoundError",
    "EditPrompts",
    "PromptLayout",
    "edit_prompts",
    "join_phrases",
    "layout_prompt",
    "locate_phrases",
    "span_positions",
    "substitute_phrases",
    "word_positions",
]

JOINER = " and "


class PromptError(ValueError):
    """A prompt that cannot be used as given."""


class PromptTooLongError(PromptError):
    """The prompt has more tokens than the text encoder accepts."""


class PhraseNotFoundError(PromptError):
    """An object phrase does not occur in the prompt (or tokenizes to nothing)."""


@dataclass(frozen=True)
class PromptLayout:
    """A tokenized prompt and where each object phrase sits in it.

    Attributes:
        prompt: the text.
        input_ids: token ids padded to ``max_length`` (BOS first).
        spans: per phrase, the token positions ``(start, stop)`` in ``input_ids``, stop exclusive.
        eos_index: position of the EOS token (= number of real tokens + 1).
    """

    prompt: str
    input_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    eos_index: int

    def positions(self, i: int) -> range:
        return range(*self.spans[i])


def join_phrases(phrases: list[str] | tuple[str, ...]) -> str:
    """The base prompt of appendix D: phrases joined with " and "."""
    return JOINER.join(phrases)


def locate_phrases(prompt: str, phrases: list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    """Character spans of ``phrases`` in ``prompt``, matched left to right, case-insensitive.

    Each phrase is searched after the end of the previous one, at word boundaries, so a prompt
    made by :func:`join_phrases` maps every phrase to its own occurrence.
    """
    lowered = prompt.lower()
    spans, cursor = [], 0
    for phrase in phrases:
        needle = " ".join(phrase.lower().split())
        start = cursor
        while True:
            found = lowered.find(needle, start) if needle else -1
            if found < 0:
                raise PhraseNotFoundError(f"phrase {phrase!r} does not occur in the prompt {prompt!r}")
            end = found + len(needle)
            before_ok = found == 0 or not lowered[found - 1].isalnum()
            after_ok = end == len(lowered) or not lowered[end].isalnum()
            if before_ok and after_ok:
                break
            start = found + 1
        spans.append((found, end))
        cursor = end
    return spans


def substitute_phrases(prompt: str, phrases, replacements) -> str:
    """Replaces each phrase's occurrence (as found by :func:`locate_phrases`) by its replacement:
    ``("a wolf under the moon", ["wolf"], ["pink-colored wolf"]) -> "a pink-colored wolf under the moon"``."""
    out, cursor = [], 0
    for (start, end), replacement in zip(locate_phrases(prompt, phrases), replacements):
        out += [prompt[cursor:start], replacement]
        cursor = end
    return "".join(out) + prompt[cursor:]


def layout_prompt(tokenizer, prompt: str, phrases: list[str] | tuple[str, ...]) -> PromptLayout:
    """Tokenizes ``prompt`` to the encoder's length and finds each phrase's token span.

    Raises:
        PromptTooLongError: the prompt needs more than ``tokenizer.model_max_length`` tokens.
        PhraseNotFoundError: a phrase is not in the prompt or covers no token.
    """
    max_length = tokenizer.model_max_length
    full = tokenizer(prompt, add_special_tokens=True, truncation=False, return_offsets_mapping=True, verbose=False)
    n_tokens = len(full["input_ids"])
    if n_tokens > max_length:
        raise PromptTooLongError(
            f"prompt {prompt!r} needs {n_tokens} tokens but the text encoder takes at most {max_length}; "
            "use shorter phrases or fewer edits per call"
        )
    offsets = full["offset_mapping"]
    spans = []
    for phrase, (c0, c1) in zip(phrases, locate_phrases(prompt, phrases)):
        # special tokens have empty offsets (0, 0); a token belongs to the phrase when its
        # characters lie inside the phrase's span.
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= c0 and b <= c1]
        if not inside:
            raise PhraseNotFoundError(f"phrase {phrase!r} covers no token of the prompt {prompt!r}")
        if inside != list(range(inside[0], inside[-1] + 1)):
            raise PhraseNotFoundError(f"phrase {phrase!r} does not map to contiguous tokens in {prompt!r}")
        spans.append((inside[0], inside[-1] + 1))
    padded = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    return PromptLayout(prompt=prompt, input_ids=tuple(padded), spans=tuple(spans), eos_index=n_tokens - 1)


@dataclass(frozen=True)
class EditPrompts:
    """The two base prompts of an edit and where each object phrase sits in them.

    Attributes:
        source, target: the prompts.
        source_phrases, target_phrases: one phrase per edit, in edit order.
        source_layout, target_layout: their token layouts (one span per phrase).
    """

    source: str
    target: str
    source_phrases: tuple[str, ...]
    target_phrases: tuple[str, ...]
    source_layout: PromptLayout
    target_layout: PromptLayout


def edit_prompts(tokenizer, edits, source_prompt: str | None = None) -> EditPrompts:
    """Source and target prompts of ``edits`` (objects with ``source`` / ``target`` phrases).

    Default: the phrases joined with " and " (ALE appendix D). A fuller ``source_prompt`` must
    contain every source phrase; the target prompt replaces each by its target.
    """
    src_phrases = tuple(e.source for e in edits)
    tgt_phrases = tuple(e.target for e in edits)
    if source_prompt is None:
        src, tgt = join_phrases(src_phrases), join_phrases(tgt_phrases)
    else:
        src, tgt = source_prompt, substitute_phrases(source_prompt, src_phrases, tgt_phrases)
    return EditPrompts(
        src, tgt, src_phrases, tgt_phrases, layout_prompt(tokenizer, src, src_phrases), layout_prompt(tokenizer, tgt, tgt_phrases)
    )


def span_positions(spans) -> tuple[int, ...]:
    """Token positions covered by ``(start, stop)`` spans, in order."""
    return tuple(p for start, stop in spans for p in range(start, stop))


def word_positions(tokenizer, prompt: str, word: str) -> tuple[int, ...]:
    """Token positions of every occurrence of ``word`` (a word or phrase, at word boundaries)
    in ``prompt``; P2P's ``get_word_inds`` also takes every occurrence.

    Raises:
        PhraseNotFoundError: ``word`` does not occur in ``prompt``.
    """
    spans = ()
    while True:
        try:
            spans = layout_prompt(tokenizer, prompt, [word] * (len(spans) + 1)).spans
        except PhraseNotFoundError:
            if not spans:
                raise
            return span_positions(spans)
