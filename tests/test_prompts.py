import pytest

from aledit.prompts import (
    PhraseNotFoundError,
    PromptTooLongError,
    join_phrases,
    layout_prompt,
    locate_phrases,
    substitute_phrases,
)


def tokens(tokenizer, layout, i):
    return tokenizer.convert_ids_to_tokens(list(layout.input_ids[slice(*layout.spans[i])]))


def test_multi_token_words(tokenizer):
    phrases = ["pink-colored wolf", "moon"]
    layout = layout_prompt(tokenizer, join_phrases(phrases), phrases)
    assert tokens(tokenizer, layout, 0) == ["pink</w>", "-</w>", "colored</w>", "wolf</w>"]
    assert tokens(tokenizer, layout, 1) == ["moon</w>"]
    assert layout.spans == ((1, 5), (6, 7))
    assert layout.eos_index == 7 and layout.input_ids[7] == tokenizer.eos_token_id
    assert len(layout.input_ids) == 77


def test_repeated_words_and_sub_phrases(tokenizer):
    phrases = ["red apple", "red cheese"]
    layout = layout_prompt(tokenizer, join_phrases(phrases), phrases)
    assert layout.spans == ((1, 3), (4, 6))
    phrases = ["apple", "apple pie"]
    layout = layout_prompt(tokenizer, join_phrases(phrases), phrases)
    assert layout.spans == ((1, 2), (3, 5))
    # same phrase twice: each occurrence is its own object
    layout = layout_prompt(tokenizer, "car and car", ["car", "car"])
    assert layout.spans == ((1, 2), (3, 4))


def test_phrase_inside_a_longer_word_is_not_matched(tokenizer):
    layout = layout_prompt(tokenizer, "a carpet and a car", ["car"])
    assert tokens(tokenizer, layout, 0) == ["car</w>"]
    assert layout.spans == ((5, 6),)


def test_user_prompt_and_substitution(tokenizer):
    prompt = "a wolf howling at the moon"
    assert locate_phrases(prompt, ["wolf", "moon"]) == [(2, 6), (22, 26)]
    assert substitute_phrases(prompt, ["wolf", "moon"], ["pink-colored wolf", "sun"]) == (
        "a pink-colored wolf howling at the sun"
    )
    with pytest.raises(PhraseNotFoundError, match="'tiger'"):
        layout_prompt(tokenizer, prompt, ["tiger"])
    with pytest.raises(PhraseNotFoundError):
        layout_prompt(tokenizer, prompt, ["moon", "wolf"])  # order matters


def test_too_long_prompt_is_an_error_not_truncation(tokenizer):
    phrases = [f"object{i} made of shiny polished material" for i in range(12)]
    with pytest.raises(PromptTooLongError, match="needs \\d+ tokens .* at most 77"):
        layout_prompt(tokenizer, join_phrases(phrases), phrases)
