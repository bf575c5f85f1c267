"""Object-Restricted Embeddings (ORE, paper Algorithm 1).

The EOS embedding of a CLIP prompt sums up every word before it, so in "pink-colored wolf and
moon" the moon's EOS already knows about pink. ORE encodes each object phrase on its own and
builds:

* ``e'_base``: the base embedding with each object's token positions replaced by that object's
  tokens from its *own* encoding (``e_Oi[O_i]``: object i's tokens in its own encoding, not the
  base positions of the base encoding);
* ``e'_Oi``: ``e'_base`` with every other object's positions set to zero and the EOS-and-padding
  tail replaced by object i's own EOS-and-padding embeddings, aligned so that object i's EOS lands
  on the base prompt's EOS position.

Everything here is a pure function; the text encoder is called once, batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import PromptError, PromptLayout, join_phrases, layout_prompt

__all__ = [
    "ObjectRestrictedEmbeddings",
    "encode_prompts",
    "object_restricted_embeddings",
    "restrict_embeddings",
]


@dataclass(frozen=True)
class ObjectRestrictedEmbeddings:
    """ORE of one base prompt with N objects.

    Attributes:
        base: ``e_base``, the unmodified encoding of the base prompt, ``[T, D]``.
        base_restricted: ``e'_base``, ``[T, D]``.
        objects: ``e'_Oi`` stacked, ``[N, T, D]``.
        layout: tokenization of the base prompt and the object spans.
    """

    base: torch.Tensor
    base_restricted: torch.Tensor
    objects: torch.Tensor
    layout: PromptLayout


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Encodes prompts in one batched call; returns the last hidden states ``[B, T, D]``.

    Prompts longer than the encoder's length are an error, never silently truncated.
    """
    for prompt in prompts:
        layout_prompt(tokenizer, prompt, [])  # raises PromptTooLongError with the count
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def restrict_embeddings(
    base_embedding: torch.Tensor,
    object_embeddings: torch.Tensor,
    base_layout: PromptLayout,
    object_layouts: list[PromptLayout] | tuple[PromptLayout, ...],
) -> ObjectRestrictedEmbeddings:
    """Algorithm 1 on already-encoded prompts.

    Args:
        base_embedding: encoding of the base prompt, ``[T, D]``.
        object_embeddings: encodings of the object phrases, each on its own, ``[N, T, D]``.
        base_layout: spans of the N objects in the base prompt.
        object_layouts: layout of each object phrase encoded alone (one span each).
    """
    n = len(base_layout.spans)
    if object_embeddings.shape[0] != n or len(object_layouts) != n:
        raise ValueError(f"{n} object spans but {object_embeddings.shape[0]} object embeddings")
    length = base_embedding.shape[0]
    eos = base_layout.eos_index
    restricted = base_embedding.clone()
    own_spans = []
    for i, (own_layout, (b0, b1)) in enumerate(zip(object_layouts, base_layout.spans)):
        o0, o1 = own_layout.spans[0]
        if o1 - o0 != b1 - b0:
            raise PromptError(
                f"object {i} has {o1 - o0} tokens alone but {b1 - b0} tokens inside {base_layout.prompt!r}"
            )
        own_spans.append((o0, o1))
        restricted[b0:b1] = object_embeddings[i, o0:o1]
    objects = restricted.unsqueeze(0).repeat(n, 1, 1)
    for i, own_layout in enumerate(object_layouts):
        for j, (b0, b1) in enumerate(base_layout.spans):
            if j != i:
                objects[i, b0:b1] = 0
        own_eos = own_layout.eos_index
        objects[i, eos:] = object_embeddings[i, own_eos : own_eos + (length - eos)]
    return ObjectRestrictedEmbeddings(base_embedding, restricted, objects, base_layout)


def object_restricted_embeddings(
    text_encoder, tokenizer, phrases: list[str] | tuple[str, ...], base_prompt: str | None = None
) -> ObjectRestrictedEmbeddings:
    """ORE for ``phrases`` inside ``base_prompt`` (default: the phrases joined with " and ")."""
    base_prompt = join_phrases(phrases) if base_prompt is None else base_prompt
    base_layout = layout_prompt(tokenizer, base_prompt, phrases)
    object_layouts = [layout_prompt(tokenizer, p, [p]) for p in phrases]
    encoded = encode_prompts(text_encoder, tokenizer, [base_prompt, *phrases])
    return restrict_embeddings(encoded[0], encoded[1:], base_layout, object_layouts)
