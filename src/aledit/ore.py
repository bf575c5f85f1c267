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

The ALE authors' code differs in two places, each an argument of :func:`restrict_embeddings`
(``preset="authors"`` of :class:`~aledit.methods.ale.ALEConfig` selects both):

* ``base_indexing="base-positions"``: ``e'_base`` takes object i's own encoding at object i's
  *base-prompt* positions (``e_Oi[B_i]``, not ``e_Oi[O_i]``); equal for the first object, the
  own encoding's EOS or padding for every later one (the source row's ``e'_base`` too);
* ``zeroing="all-but-own"``: ``e'_Oi`` zeroes every token between BOS and EOS except object
  i's own (the " and " tokens too), not only the other objects' tokens.

Everything here is a pure function; the text encoder is called once, batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import PromptError, PromptLayout, join_phrases, layout_prompt

__all__ = [
    "ORE_INDEXINGS",
    "ORE_ZEROINGS",
    "ObjectRestrictedEmbeddings",
    "encode_prompts",
    "object_restricted_embeddings",
    "restrict_embeddings",
]


ORE_INDEXINGS = ("own", "base-positions")
ORE_ZEROINGS = ("other-objects", "all-but-own")


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
    base_indexing: str = "own",
    zeroing: str = "other-objects",
) -> ObjectRestrictedEmbeddings:
    """Algorithm 1 on already-encoded prompts.

    Args:
        base_embedding: encoding of the base prompt, ``[T, D]``.
        object_embeddings: encodings of the object phrases, each on its own, ``[N, T, D]``.
        base_layout: spans of the N objects in the base prompt.
        object_layouts: layout of each object phrase encoded alone (one span each).
        base_indexing: ``"own"`` (Algorithm 1: ``e'_base[B_i] = e_Oi[O_i]``) or
            ``"base-positions"`` (the authors' code: ``e'_base[B_i] = e_Oi[B_i]``).
        zeroing: ``"other-objects"`` (Algorithm 1: ``e'_Oi`` zeroes the other objects' tokens)
            or ``"all-but-own"`` (the authors' code: every token from 1 to EOS - 1 but object
            i's own).
    """
    if base_indexing not in ORE_INDEXINGS:
        raise ValueError(f"base_indexing must be one of {', '.join(ORE_INDEXINGS)}, got {base_indexing!r}")
    if zeroing not in ORE_ZEROINGS:
        raise ValueError(f"zeroing must be one of {', '.join(ORE_ZEROINGS)}, got {zeroing!r}")
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
        restricted[b0:b1] = object_embeddings[i, o0:o1] if base_indexing == "own" else object_embeddings[i, b0:b1]
    objects = restricted.unsqueeze(0).repeat(n, 1, 1)
    for i, own_layout in enumerate(object_layouts):
        if zeroing == "all-but-own":
            objects[i, 1:eos] = 0
        else:
            for j, (b0, b1) in enumerate(base_layout.spans):
                if j != i:
                    objects[i, b0:b1] = 0
        (b0, b1), (o0, o1) = base_layout.spans[i], own_spans[i]
        objects[i, b0:b1] = object_embeddings[i, o0:o1]  # object i's own tokens, in both readings
        own_eos = own_layout.eos_index
        objects[i, eos:] = object_embeddings[i, own_eos : own_eos + (length - eos)]
    return ObjectRestrictedEmbeddings(base_embedding, restricted, objects, base_layout)


def object_restricted_embeddings(
    text_encoder,
    tokenizer,
    phrases: list[str] | tuple[str, ...],
    base_prompt: str | None = None,
    base_indexing: str = "own",
    zeroing: str = "other-objects",
) -> ObjectRestrictedEmbeddings:
    """ORE for ``phrases`` inside ``base_prompt`` (default: the phrases joined with " and ");
    ``base_indexing`` and ``zeroing`` as in :func:`restrict_embeddings`."""
    base_prompt = join_phrases(phrases) if base_prompt is None else base_prompt
    base_layout = layout_prompt(tokenizer, base_prompt, phrases)
    object_layouts = [layout_prompt(tokenizer, p, [p]) for p in phrases]
    encoded = encode_prompts(text_encoder, tokenizer, [base_prompt, *phrases])
    return restrict_embeddings(encoded[0], encoded[1:], base_layout, object_layouts, base_indexing, zeroing)
