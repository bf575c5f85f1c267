import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from aledit.attention import BatchLayout, EditState
from aledit.attention.cross_control import (
    CrossAttentionControlProcessor,
    CrossControl,
    align_tokens,
    index_mapper,
    pair_replaced_tokens,
    refinement_mapper,
    replacement_mapper,
    token_equalizer,
)
from aledit.attention.schedule import StepWindow
from aledit.attention.state import SOURCE, TARGET
from aledit.attention.step_maps import StepMaps
from aledit.hooks.local_blend import BlendRule, LocalBlend, word_mask
from aledit.methods import MethodError, method_info
from aledit.methods.p2p import P2PConfig, parse_word_window
from aledit.prompts import word_positions
from aledit.methods.registry import make_config
from aledit.prompts import layout_prompt
from aledit.samplers import BranchLatents

B, E = 49406, 49407  # CLIP's BOS / EOS
T, D, Q = 7, 8, 16
HW = (4, 4)


# -- mappers ------------------------------------------------------------------------------


def test_refinement_mapper_of_equal_prompts_is_the_identity():
    index, alphas = refinement_mapper([B, 10, 11, 12, E], [B, 10, 11, 12, E], length=9)
    assert index.tolist() == list(range(9)) and alphas.tolist() == [1.0] * 9


def test_refinement_mapper_of_an_inserted_word():
    # "a cat" -> "a black cat": the new token keeps its own map, the others follow the source
    index, alphas = refinement_mapper([B, 1, 7, E], [B, 1, 5, 7, E], length=8)
    assert alphas.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    assert index[[0, 1, 3, 4]].tolist() == [0, 1, 2, 3]
    assert index[5:].tolist() == [5, 6, 7]  # after the target's EOS: same position (P2P)


def test_refinement_mapper_of_a_swapped_and_a_removed_word():
    # "a cat on a mat" -> "a dog on mat": the swapped word is unaligned, the removed one skipped
    aligned = align_tokens([B, 1, 7, 3, 1, 9, E], [B, 1, 8, 3, 9, E])
    assert aligned == (0, 1, None, 3, 5, 6)
    index, alphas = refinement_mapper([B, 1, 7, 3, 1, 9, E], [B, 1, 8, 3, 9, E], length=8)
    assert alphas[:6].tolist() == [1, 1, 0, 1, 1, 1] and index[[3, 4, 5]].tolist() == [3, 5, 6]


def test_refinement_mapper_with_the_real_tokenizer(tokenizer):
    src = layout_prompt(tokenizer, "a photo of a cat", ["cat"])
    tgt = layout_prompt(tokenizer, "a photo of a black cat", ["black cat"])
    index, alphas = refinement_mapper(src.input_ids[: src.eos_index + 1], tgt.input_ids[: tgt.eos_index + 1])
    black, cat = tgt.spans[0][0], tgt.spans[0][1] - 1
    assert alphas[black] == 0 and index[cat] == src.spans[0][0]
    assert index[tgt.eos_index] == src.eos_index and alphas.sum() == 76


def test_replacement_mapper():
    ids_s = [B, 1, 7, 3, E, E, E, E]
    # equal token counts: the identity
    m = replacement_mapper(ids_s, [B, 1, 8, 3, E, E, E, E], [(2, 3)], [(2, 3)])
    assert torch.equal(m, torch.eye(8))
    # one token -> two: spread 1/2 onto each, the rest shifted by one
    m = replacement_mapper(ids_s, [B, 1, 8, 9, 3, E, E, E], [(2, 3)], [(2, 4)])
    assert m[2, 2] == m[2, 3] == 0.5 and m[:, 2].sum() == 0.5
    assert m[3, 4] == 1 and m[4, 5] == 1 and m[0, 0] == m[1, 1] == 1
    assert torch.equal(m.sum(dim=0)[5:], torch.ones(3))  # every tail column takes one source token
    with pytest.raises(ValueError, match="differ only in the edited phrases"):
        replacement_mapper(ids_s, [B, 2, 8, 3, E, E, E, E], [(2, 3)], [(2, 3)])


def test_index_mapper_and_equalizer():
    m = index_mapper(torch.tensor([0, 2, 1]))
    assert torch.equal(m, torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]))
    assert token_equalizer([1, 2], 2.0, length=4).tolist() == [1, 2, 2, 1]


def test_pairing_of_swapped_tokens():
    index, alphas = refinement_mapper([B, 1, 7, 3, E], [B, 1, 8, 3, E], length=6)
    emb_s, emb_t = torch.randn(6, 4), torch.randn(6, 4)
    index2, alphas2 = pair_replaced_tokens(index, alphas, emb_s, emb_t, target_length=5)
    assert alphas2[2] == 1 and index2[2] == 2  # "dog" takes "cat"'s map
    assert alphas[2] == 0  # pure: the inputs are untouched
    # an insertion has an empty source gap: nothing to pair
    index, alphas = refinement_mapper([B, 1, 3, E], [B, 1, 8, 3, E], length=6)
    assert torch.equal(pair_replaced_tokens(index, alphas, emb_s, emb_t, 5)[1], alphas)


# -- the processor on a bare attention layer --------------------------------------------------


def make_attn():
    torch.manual_seed(0)
    return Attention(query_dim=Q, cross_attention_dim=D, heads=2, dim_head=8).eval()


def make_state(steps=4):
    # [source/uncond, source/cond, target/uncond, target/cond]
    return EditState(BatchLayout.dual_branch(source_uncond=True, target_uncond=True), steps, HW)


def inputs():
    torch.manual_seed(1)
    return torch.randn(4, HW[0] * HW[1], Q), torch.randn(4, T, D)


def row_probs(attn, hidden, context, row):
    q = attn.to_q(hidden[row]).view(-1, 2, 8).transpose(0, 1)
    k = attn.to_k(context[row]).view(-1, 2, 8).transpose(0, 1)
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # [heads, HW, T]


def row_output(attn, probs, context, row):
    v = attn.to_v(context[row]).view(-1, 2, 8).transpose(0, 1)
    return attn.to_out[0]((probs @ v).transpose(0, 1).reshape(HW[0] * HW[1], -1))


@torch.no_grad()
def test_replace_inside_the_window_gives_the_target_the_sources_mapped_maps():
    attn, (hidden, context) = make_attn(), inputs()
    perm = [0, 1, 3, 2, 4, 5, 6]  # target token 2 <- source token 3 and vice versa
    control = CrossControl(index_mapper(torch.tensor(perm)), torch.ones(T), StepWindow(0.0, 0.5))
    s = make_state()
    store = StepMaps(s, {SOURCE: range(T), TARGET: range(T)}, accumulate=False, level=0)
    attn.set_processor(CrossAttentionControlProcessor(s, control, store))
    plain_proc = AttnProcessor2_0()

    s.step = 1  # int(0 * 4) <= 1 < int(0.5 * 4)
    out = attn(hidden, encoder_hidden_states=context)
    assert torch.equal(store.maps(TARGET), store.maps(SOURCE)[perm])
    expected = row_output(attn, row_probs(attn, hidden, context, 1)[..., perm], context, 3)
    assert torch.allclose(out[3], expected, atol=1e-5)
    attn.set_processor(plain_proc)
    plain = attn(hidden, encoder_hidden_states=context)
    for row in (0, 1, 2):  # unconditional rows and the source are not edited
        assert torch.allclose(out[row], plain[row], atol=1e-5)

    attn.set_processor(CrossAttentionControlProcessor(s, control, store))
    s.step = 2  # outside the window: the target's own attention
    out = attn(hidden, encoder_hidden_states=context)
    assert torch.allclose(out[3], plain[3], atol=1e-5)
    own = row_probs(attn, hidden, context, 3).mean(0).T.reshape(T, *HW)
    assert torch.allclose(store.maps(TARGET), own, atol=1e-6)


@torch.no_grad()
def test_identical_rows_stay_bitwise_identical_under_control():
    attn, (hidden, context) = make_attn(), inputs()
    hidden[2:], context[2:] = hidden[:2], context[:2]
    control = CrossControl(index_mapper(torch.arange(T)), torch.ones(T), StepWindow(0.0, 1.0))
    attn.set_processor(CrossAttentionControlProcessor(make_state(), control))
    out = attn(hidden, encoder_hidden_states=context)
    assert torch.equal(out[3], out[1]) and torch.equal(out[2], out[0])


def test_reweight_scales_the_chosen_tokens_maps_by_exactly_c():
    torch.manual_seed(2)
    src, tgt = torch.rand(2, 16, T).softmax(-1), torch.rand(2, 16, T).softmax(-1)
    c = 2.5
    identity = index_mapper(torch.arange(T))
    control = CrossControl(identity, torch.ones(T), StepWindow(), equalizer=token_equalizer([3], c, T))
    out = control.apply(src, tgt, control.step_alphas(0, 4))
    assert torch.equal(out[..., 3], src[..., 3] * c)
    others = [0, 1, 2, 4, 5, 6]
    assert torch.equal(out[..., others], src[..., others])  # no renormalisation
    # refine keeps a new token's own map and re-weights it too
    alphas = torch.ones(T)
    alphas[3] = 0
    control = CrossControl(identity, alphas, StepWindow(), equalizer=token_equalizer([3], c, T))
    out = control.apply(src, tgt, control.step_alphas(0, 4))
    assert torch.equal(out[..., 3], tgt[..., 3] * c)


@torch.no_grad()
def test_reweight_through_the_processor():
    attn, (hidden, context) = make_attn(), inputs()
    hidden[2:], context[2:] = hidden[:2], context[:2]  # same prompt: the mapped maps are the own ones
    s = make_state()
    store = StepMaps(s, {SOURCE: range(T), TARGET: range(T)}, level=0)
    equalizer = token_equalizer([3], 2.0, T)
    control = CrossControl(index_mapper(torch.arange(T)), torch.ones(T), StepWindow(), equalizer=equalizer)
    attn.set_processor(CrossAttentionControlProcessor(s, control, store))
    attn(hidden, encoder_hidden_states=context)
    tgt, src = store.maps(TARGET), store.maps(SOURCE)
    assert torch.allclose(tgt[3], 2.0 * src[3], rtol=1e-6) and torch.equal(tgt[:3], src[:3])


def test_per_word_windows_override_the_default():
    control = CrossControl(
        index_mapper(torch.arange(T)),
        torch.ones(T),
        StepWindow(0.0, 0.5),
        token_windows=(((2, 3), StepWindow(0.0, 1.0)),),
    )
    assert control.step_alphas(1, 4).tolist() == [1.0] * T
    assert control.step_alphas(3, 4).tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert parse_word_window("tiger=0.8") == ("tiger", StepWindow(0.0, 0.8))
    assert parse_word_window("big cat=0.2:0.6") == ("big cat", StepWindow(0.2, 0.6))


def test_word_positions_finds_every_occurrence(tokenizer):
    prompt = "a red apple and a red cheese"
    first = layout_prompt(tokenizer, prompt, ["red", "red"]).spans
    assert word_positions(tokenizer, prompt, "red") == (first[0][0], first[1][0])


# -- step maps and the local blend ---------------------------------------------------------------


def test_step_maps_keep_latent_over_4_or_fall_back_to_the_coarsest_level():
    s = EditState(BatchLayout.dual_branch(True, True), 4, (16, 16))
    maps = StepMaps(s, {TARGET: (1,)})
    assert maps.wanted_hw == (4, 4)
    for hw in [(16, 16), (8, 8), (8, 8), (16, 16)]:  # a two-level UNet
        maps.add(TARGET, torch.rand(2, hw[0] * hw[1], T), hw)
    assert maps.hw == (8, 8) and maps.maps(TARGET).shape == (1, 8, 8)
    full = StepMaps(s, {TARGET: (1,)})
    for hw in [(16, 16), (8, 8), (4, 4), (2, 2), (4, 4)]:
        full.add(TARGET, torch.rand(2, hw[0] * hw[1], T), hw)
    assert full.hw == (4, 4) and not full.wants((2, 2))


def test_step_maps_accumulate_or_keep_the_current_step():
    s = EditState(BatchLayout.dual_branch(True, True), 4, (4, 4))
    probs = torch.rand(2, 16, T)
    total, current = StepMaps(s, {SOURCE: (0, 2)}, level=0), StepMaps(s, {SOURCE: (0, 2)}, accumulate=False, level=0)
    for step in range(3):
        s.step = step
        for store in (total, current):
            store.add(SOURCE, probs * (step + 1), (4, 4))
    one = probs[:, :, [0, 2]].mean(0).T.reshape(2, 4, 4)
    assert torch.allclose(total.maps(SOURCE), 6 * one) and torch.allclose(current.maps(SOURCE), 3 * one)
    assert total.maps(TARGET) is None


def test_word_mask_pools_upsamples_normalises_and_thresholds():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0
    mask = word_mask(maps, (8, 8), threshold=0.3, pool=True)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:6, 0:6] = True  # the peak's 3x3 neighbourhood, each cell 2x2 in the latent
    assert torch.equal(mask, expected)
    assert torch.equal(word_mask(maps, (8, 8), 0.3, pool=False)[2:4, 2:4], torch.ones(2, 2, dtype=torch.bool))
    assert not word_mask(torch.zeros(1, 4, 4), (8, 8), 0.3).any()  # no attention: empty mask


def branch_latents():
    torch.manual_seed(3)
    return BranchLatents(*(torch.randn(1, 4, 8, 8) for _ in range(4)))


def filled_store(state):
    store = StepMaps(state, {SOURCE: (1,), TARGET: (2,)}, level=1)
    torch.manual_seed(4)
    for branch in (SOURCE, TARGET):
        store.add(branch, torch.rand(2, 16, T) + 0.01, (4, 4))
    return store


@pytest.mark.parametrize("threshold, keeps", [(1.0, False), (0.0, True)])
def test_local_blend_threshold_extremes(threshold, keeps):
    s = EditState(BatchLayout.dual_branch(True, True), 10, (8, 8))
    extras = {}
    blend = LocalBlend(s, filled_store(s), BlendRule(threshold=threshold), StepWindow(0.2, 1.0), extras=extras)
    lat = branch_latents()
    assert blend(1, lat) is lat  # before int(0.2 * 10) = 2
    out = blend(2, lat)
    if keeps:  # everything is edit region: the target is unchanged
        assert torch.equal(out.target, lat.target) and torch.equal(out.target_x0, lat.target_x0)
    else:  # empty region: the target is the source everywhere
        assert torch.equal(out.target, lat.source) and torch.equal(out.target_x0, lat.source_x0)
    assert torch.equal(out.source, lat.source)
    assert extras["blend_mask"].shape == (8, 8) and bool(extras["blend_mask"].all()) == keeps


def test_local_blend_with_given_masks():
    s = EditState(BatchLayout.dual_branch(True, True), 4, (8, 8))
    given = torch.zeros(2, 8, 8, dtype=torch.bool)
    given[0, :3, :3] = True
    given[1, 5:, 6:] = True
    out = LocalBlend(s, None, masks=given, window=StepWindow(0.0, 1.0))(0, lat := branch_latents())
    region = given.any(0).expand_as(lat.target[0])[None]
    assert torch.equal(out.target[~region], lat.source[~region]) and torch.equal(out.target[region], lat.target[region])
    assert torch.equal(out.target_x0[~region], lat.source_x0[~region])


# -- the method ----------------------------------------------------------------------------------


def scene(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), bool)
    mask[8:40, 12:44] = True
    return img, mask


def test_p2p_with_the_same_prompt_and_every_window_open_reconstructs_bitwise(pipe):
    img, _ = scene()
    config = P2PConfig(cross_replace=1.0, self_replace=1.0, local_blend=False, reweight=1.0, null_text=False)
    out = pipe.edit(img, ["cat -> cat"], method="p2p", config=config, size=64, steps=3, progress=False)
    assert torch.equal(out.latents.target, out.latents.source)
    assert torch.equal(out.latents.target_x0, out.latents.source_x0)


def test_p2p_edit_with_attention_blend_and_with_given_masks(pipe):
    img, mask = scene()
    kw = dict(method="p2p", size=64, steps=3, progress=False, options={"null_text": False, "start_blend": 0.0})
    out = pipe.edit(img, ["cat -> black cat"], return_attention=True, **kw)
    assert out.extras["cross_mode"] == "refine" and out.extras["blend_mask"].shape == (16, 16)
    assert out.attention_maps.shape == (1, 4, 4) and out.image.size == (64, 64)
    again = pipe.edit(img, ["cat -> black cat"], return_attention=True, **kw)
    assert torch.equal(again.latents.target_x0, out.latents.target_x0)  # deterministic

    masked = pipe.edit(img, ["cat -> black cat"], {"cat": mask}, **kw)
    region = masked.masks.any(0)
    assert torch.equal(masked.extras["blend_mask"], region)
    outside = (~region).expand_as(masked.latents.target_x0[0])[None]
    assert torch.equal(masked.latents.target_x0[outside], masked.latents.source_x0[outside])
    assert not torch.equal(masked.latents.target_x0, masked.latents.source_x0)


def test_p2p_auto_mode_and_word_windows(pipe):
    img, _ = scene()
    opts = {"null_text": False, "mode": "auto", "local_blend": False, "cross_replace_words": ("tiger=1.0",)}
    out = pipe.edit(img, ["cat -> tiger"], method="p2p", options=opts, size=64, steps=2, progress=False)
    assert out.extras["cross_mode"] == "replace"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"cross_replace": 1.5}, "cross_replace must be in"),
        ({"self_replace": -0.1}, "self_replace must be in"),
        ({"guidance": float("nan")}, "guidance must be finite"),
        ({"mode": "swap"}, "mode must be one of"),
        ({"cross_replace_words": ("tiger",)}, "WORD=END"),
        ({"cross_replace_words": ("tiger=0.9:0.2",)}, "is after end"),
        ({"null_text": "yes"}, "null_text must be true or false"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match) as info:
        P2PConfig(**options)
    assert "\n" not in str(info.value)
    with pytest.raises(MethodError, match=match):
        make_config("p2p", options)


def test_registry_entry():
    info = method_info("p2p")
    assert (info.default_steps, info.default_size, info.masks) == (50, 512, "optional")
    d = info.defaults()
    assert (d["mode"], d["cross_replace"], d["self_replace"]) == ("refine", 0.4, 0.6)
    assert (d["reweight"], d["guidance"], d["blend_threshold"], d["start_blend"]) == (2.0, 7.5, 0.3, 0.2)


@torch.no_grad()
def test_blend_maps_come_from_the_five_latent_over_4_layers_of_an_sd_unet():
    from diffusers import UNet2DConditionModel

    from aledit.attention.install import is_cross_attention

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 32, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8
    ).eval()
    s = EditState(BatchLayout.dual_branch(False, False), 1, (32, 32))
    store = StepMaps(s, {TARGET: range(77)})
    control = {n: CrossAttentionControlProcessor(s, None, store) for n in unet.attn_processors if is_cross_attention(n)}
    unet.set_attn_processor({**unet.attn_processors, **control})
    unet(torch.randn(2, 4, 32, 32), 10, encoder_hidden_states=torch.randn(2, 77, 32))
    # every layer's head-mean rows sum to 1 over the 77 tokens: the sum counts the layers kept
    assert store.hw == (8, 8)
    assert torch.allclose(store.maps(TARGET).sum(0), torch.full((8, 8), 5.0), atol=1e-4)
