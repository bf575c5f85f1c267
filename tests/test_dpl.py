import math

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.dpl import (
    attention_balance_loss,
    background_loss,
    decaying_threshold,
    disjoint_loss,
    dpl_losses,
    gaussian_kernel,
    noun_maps,
)
from aledit.methods import MethodError, method_info
from aledit.methods.dpl import DPLConfig
from aledit.methods.registry import make_config
from aledit.samplers.base import UNetCall
from aledit.samplers.dpl_inversion import DPLInversion, DPLSettings, DynamicPrompt, attention_levels, pick_level

T = 8  # tokens: BOS, 6 words, last


def blob(hw, rows, cols) -> torch.Tensor:
    m = torch.zeros(hw)
    m[rows, cols] = 1.0
    return m.flatten()


# -- losses on planted maps -----------------------------------------------------------------


def test_disjoint_blobs_have_no_overlap_and_identical_maps_full_overlap():
    a, b = blob((4, 4), slice(0, 2), slice(0, 2)), blob((4, 4), slice(2, 4), slice(2, 4))
    assert disjoint_loss(torch.stack([a, b])).item() == 0.0
    assert disjoint_loss(torch.stack([a, a])).item() == pytest.approx(1.0)
    # Eq. 6 sums over ordered pairs: 2 for two identical maps; the code's mean over pairs: 1
    assert disjoint_loss(torch.stack([a, a]), reduction="sum").item() == pytest.approx(2.0)
    # three maps, one pair identical: mean over the 3 pairs = 1/3
    c = blob((4, 4), slice(0, 1), slice(3, 4))
    assert disjoint_loss(torch.stack([a, a, c])).item() == pytest.approx(1 / 3)
    assert disjoint_loss(a[None]).item() == 0.0


def test_a_noun_map_equal_to_the_background_has_background_loss_one():
    bg = blob((4, 4), slice(0, 4), slice(0, 2))
    inside = blob((4, 4), slice(0, 4), slice(2, 4))
    assert background_loss(bg[None], bg).item() == pytest.approx(1.0)
    assert background_loss(inside[None], bg).item() == 0.0
    # mean over nouns (code) vs sum (Eq. 7)
    assert background_loss(torch.stack([bg, inside]), bg).item() == pytest.approx(0.5)
    assert background_loss(torch.stack([bg, bg]), bg, reduction="sum").item() == pytest.approx(2.0)


def attention_with(noun_maps_by_token: dict[int, torch.Tensor], hw=(4, 4)) -> torch.Tensor:
    """[HW, T] rows summing to 1: the given tokens' maps, the rest spread on token 0 (BOS)."""
    a = torch.zeros(hw[0] * hw[1], T)
    for k, m in noun_maps_by_token.items():
        a[:, k] = m
    a[:, 0] = 1 - a.sum(dim=1)
    return a


def test_attention_balance_loss_by_hand():
    hw = (4, 4)
    # uniform attention: softmax(100 A[:, 1:-1]) is 1 / (T - 2) everywhere, smoothing keeps it
    uniform = torch.full((16, T), 1 / T)
    expected = 1 - 1 / (T - 2)
    assert attention_balance_loss(uniform, ((2, 3),), hw).item() == pytest.approx(expected, abs=1e-6)
    # a noun owning a 3x3 block: its softmax is ~1 there, so the smoothed peak is ~1 and L ~0
    block = blob(hw, slice(0, 3), slice(0, 3))
    a = attention_with({2: block}, hw)
    assert attention_balance_loss(a, ((2, 3),), hw).item() == pytest.approx(0.0, abs=1e-6)
    # the loss is the worst noun's: a second noun with no attention gets 1 - 1/(T-2)'s peak...
    b = attention_with({2: block, 4: blob(hw, slice(3, 4), slice(3, 4)) * 0}, hw)
    worst = attention_balance_loss(b, ((2, 3), (4, 5)), hw).item()
    only_first = attention_balance_loss(b, ((2, 3),), hw).item()
    assert worst > 0.5 and only_first == pytest.approx(0.0, abs=1e-6)


def test_gaussian_kernel_and_the_attend_and_excite_form():
    k = gaussian_kernel(3, 0.5)
    assert k.sum().item() == pytest.approx(1.0) and k[1, 1] == k.max()
    # A&E writes exp(-((x - mu) / (2 sigma))^2): its sigma-0.5 kernel is ours at 0.5 * sqrt(2)
    x = torch.arange(3.0) - 1
    g = torch.exp(-((x / (2 * 0.5)) ** 2))
    ae = g[:, None] * g[None, :]
    assert torch.allclose(ae / ae.sum(), gaussian_kernel(3, 0.5 * math.sqrt(2)), atol=1e-6)


def test_thresholds_decay_exponentially():
    assert decaying_threshold(0, 25, 0.3) == 0.3
    assert decaying_threshold(25, 25, 0.3) == pytest.approx(0.3 / math.e)
    th = DPLSettings().thresholds(0)
    assert th == (0.3, 0.9, 0.7)  # the authors' DPL.sh: L_at, L_dj, L_bg


def test_one_noun_gets_only_the_background_loss():
    hw = (4, 4)
    bg = blob(hw, slice(0, 4), slice(0, 2))
    a = attention_with({2: bg * 0.5}, hw)
    out = dpl_losses(a, ((2, 3),), hw, bg)
    assert out.at.item() == 0.0 and out.dj.item() == 0.0
    assert out.bg.item() == pytest.approx(1.0) and out.total.item() == pytest.approx(0.05)
    two = dpl_losses(attention_with({2: bg * 0.5, 3: bg * 0.5}, hw), ((2, 3), (3, 4)), hw, bg)
    assert two.dj.item() == pytest.approx(1.0)
    assert two.total.item() == pytest.approx(two.at.item() + 0.05 * 1.0 + 0.05 * 1.0, abs=1e-6)
    assert noun_maps(a, ((2, 3),)).shape == (1, 16)


# -- the optimisation on a tiny UNet ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from aledit.ore import encode_prompts
    from aledit.presets import tiny_random_components
    from aledit.prompts import layout_prompt

    c = tiny_random_components(seed=0)
    layout = layout_prompt(c["tokenizer"], "cat and dog", ["cat", "dog"])
    embedding = encode_prompts(c["text_encoder"], c["tokenizer"], ["cat and dog"])[0]
    prompt = DynamicPrompt(c["text_encoder"], torch.tensor([layout.input_ids]), layout.spans, embedding)
    return c, prompt


def test_levels_of_the_tiny_unet_fall_back_to_the_coarsest(tiny):
    c, _ = tiny
    levels = attention_levels(c["unet"], (16, 16))
    assert levels == [(0, (16, 16)), (1, (8, 8))]
    assert pick_level(levels, 2) == (8, 8) and pick_level(levels, 0) == (16, 16)


def test_learning_lowers_the_losses_and_changes_only_the_tokens(tiny):
    c, prompt = tiny
    unet, text_encoder = c["unet"], c["text_encoder"]
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    settings = DPLSettings(max_iterations=4, lr=0.05, dj_threshold=(25, 0.0), bg_threshold=(50, 0.0))
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)  # levels 8x8 and 4x4: the maps are 4x4
    background = torch.zeros(4, 4, dtype=torch.bool)
    background[:, :2] = True
    tokens = prompt.initial_tokens()
    learned, losses, updates = DPLInversion(settings, None).learn_step(
        UNetCall(unet), prompt, x, torch.tensor(500), 0, tokens, background
    )
    assert updates == 4 and len(losses) == 4
    assert losses[-1][1] < losses[0][1]  # L_dj
    assert losses[-1][2] < losses[0][2]  # L_bg
    assert not torch.equal(learned, tokens) and learned.shape == tokens.shape
    for k, v in unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    for k, v in text_encoder.state_dict().items():
        assert torch.equal(v, text_before[k]), k
    assert all(p.grad is None for p in unet.parameters())
    assert all(p.grad is None for p in text_encoder.parameters())
    # the encoder is causal: positions before the first noun keep the prompt's own embedding
    with torch.no_grad():
        encoded = prompt.encode(learned)[0]
        same = prompt.encode(tokens)[0]
    first = prompt.spans[0][0]
    assert torch.allclose(encoded[:first], prompt.embedding[:first], atol=1e-6)
    assert not torch.allclose(encoded[first:], same[first:])


def test_high_thresholds_stop_before_any_iteration(tiny):
    c, prompt = tiny
    settings = DPLSettings(at_threshold=(25, 10.0), dj_threshold=(25, 10.0), bg_threshold=(50, 10.0))
    tokens = prompt.initial_tokens()
    learned, losses, updates = DPLInversion(settings, None).learn_step(
        UNetCall(c["unet"]), prompt, torch.randn(1, 4, 8, 8), torch.tensor(500), 0, tokens, None
    )
    assert updates == 0 and len(losses) == 1 and torch.equal(learned, tokens)


def test_gradient_checkpointing_learns_the_same_tokens(tiny):
    c, prompt = tiny
    x, tokens = torch.randn(1, 4, 8, 8), prompt.initial_tokens()
    learned = []
    for checkpointing in (False, True):
        settings = DPLSettings(max_iterations=1, lr=0.05, dj_threshold=(25, 0.0), gradient_checkpointing=checkpointing)
        out, _, _ = DPLInversion(settings, None).learn_step(UNetCall(c["unet"]), prompt, x, torch.tensor(500), 0, tokens, None)
        learned.append(out)
    assert torch.allclose(learned[0], learned[1], atol=1e-6) and not torch.equal(learned[0], tokens)
    assert not c["unet"].is_gradient_checkpointing


# -- the method -------------------------------------------------------------------------------


def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("null_text", [False, True])
def test_dpl_without_learning_is_p2p_bit_for_bit(pipe, null_text):
    dpl = DPLConfig(max_iterations=0, null_text=null_text)
    p2p = dpl.p2p_config()
    kwargs = dict(size=32, steps=2 if not null_text else 1, progress=False)  # NTI: 10 passes a step
    edits = ["cat -> tiger", "dog -> wolf"]
    a = pipe.edit(image(), edits, method="dpl", config=dpl, **kwargs)
    b = pipe.edit(image(), edits, method="p2p", config=p2p, **kwargs)
    assert torch.equal(a.latents.target_x0, b.latents.target_x0)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.extras["inversion_stats"]["token_iterations"] == 0


def test_dpl_edit_learns_and_caches(pipe, tmp_path):
    from safetensors import safe_open

    options = dict(max_iterations=1, null_text_inner_steps=1, dj_beta=0.0, at_beta=0.0)
    kwargs = dict(size=32, steps=2, progress=False, options=options, inversion_cache=tmp_path)
    first = pipe.edit(image(), ["cat -> tiger", "dog -> wolf"], method="dpl", **kwargs)
    stats = first.extras["inversion_stats"]
    assert stats["token_iterations"] == 2 and stats["text_backward"] == 2 and stats["backward"] == 4
    assert first.extras["dpl_iterations"] == [1, 1] and len(first.extras["dpl_losses"]) == 2
    assert first.extras["dpl_background"].shape == (4, 4)  # the 4x4 level of a 32x32 image
    (path,) = tmp_path.iterdir()
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
    assert {"source_embeddings.0", "source_embeddings.1", "null_embeddings.1"} <= names
    again = pipe.edit(image(), ["cat -> tiger", "dog -> wolf"], method="dpl", **kwargs)
    assert again.extras["inversion_stats"] == {}  # loaded: no pass spent
    assert torch.equal(first.latents.target_x0, again.latents.target_x0)
    other = pipe.edit(image(), ["cat -> lion", "dog -> fox"], method="dpl", **kwargs)  # same source
    assert other.extras["inversion_stats"] == {}


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_iterations": -1}, "max_iterations"),
        ({"reduction": "median"}, "reduction"),
        ({"cross_replace": 1.5}, "cross_replace"),
        ({"at_alpha": 0.0}, "alpha"),
        ({"bg_weight": -1.0}, "weight"),
        ({"extra_nouns": "dog"}, "extra_nouns"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises((ValueError, MethodError), match=match):
        make_config("dpl", options)


def test_registry_entry_and_paper_defaults():
    info = method_info("dpl")
    assert info.default_steps == 50 and info.masks == "optional"
    cfg = DPLConfig()
    assert (cfg.cross_replace * 50, cfg.self_replace * 50) == (40, 20)
    assert cfg.self_max_tokens == 16 * 16 and cfg.blend_threshold == 0.3
    assert (cfg.at_weight, cfg.dj_weight, cfg.bg_weight) == (1.0, 0.05, 0.05)
    assert cfg.max_iterations == 21 and cfg.lr == 1e-3
    nti = cfg.null_text_config()
    assert nti.lr == 1e-2 and nti.lr_decay_steps == 100
