import pytest
import torch

from aledit.ore import encode_prompts, object_restricted_embeddings
from aledit.prompts import join_phrases, layout_prompt

CASES = [
    ["wolf"],
    ["pink-colored wolf", "moon"],
    ["red apple", "red cheese", "yellow-colored plate"],
    ["cat", "dog", "bus made of gold", "tree", "blue-colored car"],
]


def own(text_encoder, tokenizer, phrase):
    return encode_prompts(text_encoder, tokenizer, [phrase])[0], layout_prompt(tokenizer, phrase, [phrase])


@pytest.mark.parametrize("phrases", CASES, ids=lambda p: f"{len(p)}obj")
def test_ore_is_exactly_algorithm_1(text_encoder, tokenizer, phrases):
    ore = object_restricted_embeddings(text_encoder, tokenizer, phrases)
    base = encode_prompts(text_encoder, tokenizer, [join_phrases(phrases)])[0]
    layout = ore.layout
    n, eos, length = len(phrases), layout.eos_index, base.shape[0]
    assert ore.objects.shape == (n, length, base.shape[1])
    assert torch.allclose(ore.base, base, atol=1e-6)
    object_positions = set()
    for i, phrase in enumerate(phrases):
        e_own, own_layout = own(text_encoder, tokenizer, phrase)
        (b0, b1), (o0, o1) = layout.spans[i], own_layout.spans[0]
        object_positions |= set(range(b0, b1))
        # e'_base and e'_Oi hold object i's tokens from its own encoding
        assert torch.allclose(ore.base_restricted[b0:b1], e_own[o0:o1], atol=1e-6)
        assert torch.allclose(ore.objects[i, b0:b1], e_own[o0:o1], atol=1e-6)
        # other objects' positions are zero in e'_Oi
        for j, (c0, c1) in enumerate(layout.spans):
            if j != i:
                assert torch.count_nonzero(ore.objects[i, c0:c1]) == 0
        # the tail from the base EOS equals object i's own EOS-and-padding embeddings
        own_eos = own_layout.eos_index
        assert torch.allclose(ore.objects[i, eos:], e_own[own_eos : own_eos + length - eos], atol=1e-6)
    # BOS and the "and" tokens keep the base embedding
    rest = [p for p in range(eos) if p not in object_positions]
    assert 0 in rest
    assert torch.allclose(ore.base_restricted[rest], base[rest], atol=1e-6)
    assert torch.allclose(ore.base_restricted[eos:], base[eos:], atol=1e-6)
    for i in range(n):
        assert torch.allclose(ore.objects[i, rest], base[rest], atol=1e-6)


def test_later_objects_use_their_own_positions_not_the_base_positions(text_encoder, tokenizer):
    # The public reference indexes object i's own encoding at the *base* positions; that is
    # wrong for every object after the first. Check we differ from that reading.
    phrases = ["pink-colored wolf", "moon"]
    ore = object_restricted_embeddings(text_encoder, tokenizer, phrases)
    e_moon, _ = own(text_encoder, tokenizer, "moon")
    b0, b1 = ore.layout.spans[1]
    assert (b0, b1) == (6, 7)
    assert torch.allclose(ore.base_restricted[b0:b1], e_moon[1:2], atol=1e-6)
    assert not torch.allclose(ore.base_restricted[b0:b1], e_moon[b0:b1], atol=1e-3)


def test_one_batched_text_encoder_call(tiny_components, tokenizer):
    encoder = tiny_components["text_encoder"]
    calls = []
    handle = encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    try:
        object_restricted_embeddings(encoder, tokenizer, CASES[3])
    finally:
        handle.remove()
    assert calls == [torch.Size([6, 77])]
