"""MasaCtrl and Free-Prompt-Editing: processors on a bare Attention module, layer choice on an
SD-1.x-shaped UNet, plans, configs, and end-to-end runs on tiny-random (DDIM sampler)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from PIL import Image

from aledit.attention import BatchLayout, EditAttnProcessor, EditState, MutualSelfAttentionProcessor
from aledit.attention.install import self_attention_order
from aledit.attention.masked_mutual import (
    GivenMasks,
    MaskedMutualSelfAttentionProcessor,
    attention_foreground,
    region_attention,
)
from aledit.attention.schedule import StepRange
from aledit.attention.state import SOURCE, TARGET
from aledit.edits import parse_edit
from aledit.methods.base import MethodContext
from aledit.methods.fpe import FPEConfig, FPEMethod
from aledit.methods.masactrl import MasaCtrlConfig, MasaCtrlMethod, masactrl_layers
from aledit.methods.registry import MethodError, make_config, method_info
from aledit.ore import encode_prompts

HW = (4, 4)
Q = 16
FOUR_ROWS = BatchLayout.dual_branch(source_uncond=True, target_uncond=True)  # guidance 7.5 both


def self_attn():
    torch.manual_seed(0)
    return Attention(query_dim=Q, heads=2, dim_head=8).eval()


def heads(attn, x):
    """``[L, heads * 8]`` projection -> ``[heads, L, 8]``."""
    return x.view(-1, attn.heads, 8).transpose(0, 1)


def manual(attn, hidden_q, hidden_kv, key_mask=None):
    """One row of self-attention with queries from ``hidden_q`` and keys/values from
    ``hidden_kv`` ``[L, Q]``, over the keys in ``key_mask`` only."""
    q, k, v = heads(attn, attn.to_q(hidden_q)), heads(attn, attn.to_k(hidden_kv)), heads(attn, attn.to_v(hidden_kv))
    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float("-inf"))
    out = logits.softmax(-1) @ v
    return attn.to_out[0](out.transpose(0, 1).reshape(-1, attn.heads * 8))


# -- processors on their own -------------------------------------------------------------------


@torch.no_grad()
def test_masactrl_processor_gives_each_target_half_its_source_halfs_keys_and_values():
    attn = self_attn()
    state = EditState(FOUR_ROWS, 4, HW)
    attn.set_processor(MutualSelfAttentionProcessor(state, StepRange(0), borrow=("key", "value")))
    torch.manual_seed(1)
    hidden = torch.randn(4, 16, Q)
    out = attn(hidden)
    rows = {(r.branch, r.conditional): i for i, r in enumerate(FOUR_ROWS.rows)}
    for cond in (False, True):
        src, tgt = rows[(SOURCE, cond)], rows[(TARGET, cond)]
        assert torch.allclose(out[tgt], manual(attn, hidden[tgt], hidden[src]), atol=1e-5)
        assert torch.allclose(out[src], manual(attn, hidden[src], hidden[src]), atol=1e-5)


@torch.no_grad()
def test_mask_guided_background_queries_read_only_source_background():
    attn = self_attn()
    state = EditState(FOUR_ROWS, 4, HW)
    fg = torch.zeros(HW, dtype=torch.bool)
    fg[:2, :2] = True
    attn.set_processor(MaskedMutualSelfAttentionProcessor(state, StepRange(0), GivenMasks(fg)))
    torch.manual_seed(1)
    hidden = torch.randn(4, 16, Q)
    out = attn(hidden)
    flat = fg.flatten()
    src, tgt = FOUR_ROWS.index(SOURCE, True), FOUR_ROWS.index(TARGET, True)
    expected_bg = manual(attn, hidden[tgt], hidden[src], ~flat)
    expected_fg = manual(attn, hidden[tgt], hidden[src], flat)
    assert torch.allclose(out[tgt][~flat], expected_bg[~flat], atol=1e-5)
    assert torch.allclose(out[tgt][flat], expected_fg[flat], atol=1e-5)
    # changing the source's object positions leaves every target background query unchanged
    moved = hidden.clone()
    moved[FOUR_ROWS.rows_of(SOURCE)] = moved[FOUR_ROWS.rows_of(SOURCE)] + 3.0 * flat[None, :, None]
    again = attn(moved)
    for row in FOUR_ROWS.rows_of(TARGET):
        assert torch.allclose(again[row][~flat], out[row][~flat], atol=1e-6)
        assert not torch.allclose(again[row][flat], out[row][flat], atol=1e-3)


@torch.no_grad()
def test_attention_masks_before_any_map_mean_plain_mutual_attention():
    from aledit.attention.masked_mutual import CrossAttentionMasks

    class EmptyStore:
        def maps(self, branch):
            return None

    attn = self_attn()
    state = EditState(FOUR_ROWS, 4, HW)
    torch.manual_seed(1)
    hidden = torch.randn(4, 16, Q)
    attn.set_processor(MaskedMutualSelfAttentionProcessor(state, StepRange(0), CrossAttentionMasks(EmptyStore())))
    masked = attn(hidden)
    attn.set_processor(MutualSelfAttentionProcessor(state, StepRange(0), borrow=("key", "value")))
    assert torch.allclose(masked, attn(hidden), atol=1e-6)


def test_attention_foreground_normalises_sums_and_thresholds():
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0], maps[1, 0, 0], maps[1, 1, 1] = 0.5, 0.5, 0.05  # sum: 1.0 at (0,0), 0.05 at (1,1)
    assert attention_foreground(maps, (2, 2), 0.1).tolist() == [True, False, False, False]
    assert attention_foreground(maps, (2, 2), 0.05).tolist() == [True, False, False, True]
    assert attention_foreground(maps, (4, 4), 0.1).reshape(4, 4)[:2, :2].all()  # nearest upsampling
    assert not attention_foreground(torch.ones(1, 2, 2), (2, 2), 0.1).any()  # a flat map has no object


def test_region_attention_with_an_absent_region_is_plain_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    plain = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    for mask in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
        assert torch.allclose(region_attention(q, k, v, mask, 0.5), plain, atol=1e-6)


# -- layer choice -------------------------------------------------------------------------------


def test_default_layers_are_sd1_blocks_10_to_15():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 32, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8
    )
    names = self_attention_order(unet.attn_processors)
    assert len(names) == 16
    chosen = masactrl_layers(names)
    assert chosen == names[10:16] == masactrl_layers(names, start_layer=10)
    assert all(n.startswith(("up_blocks.2.", "up_blocks.3.")) for n in chosen)
    assert masactrl_layers(names, 0) == names
    with pytest.raises(ValueError, match="start_layer"):
        masactrl_layers(names, 16)


def test_default_layers_on_a_shallow_unet(tiny_components):
    names = self_attention_order(tiny_components["unet"].attn_processors)
    chosen = masactrl_layers(names)
    assert chosen and chosen == tuple(n for n in names if n.startswith("up_blocks."))


# -- plans and configs --------------------------------------------------------------------------


def context(components, tokenizer, steps=4, masks=None, record=None):
    layout = MasaCtrlMethod().guidance.layout()
    state = EditState(layout, steps, (16, 16))
    return MethodContext(
        text_encoder=components["text_encoder"],
        tokenizer=tokenizer,
        edits=(parse_edit("cat -> tiger"),),
        masks=masks,
        state=state,
        record_attention=record,
        attention_layers=self_attention_order(components["unet"].attn_processors),
    )


@pytest.mark.parametrize("method_class", [MasaCtrlMethod, FPEMethod])
def test_plans_condition_the_source_on_the_chosen_inversion_prompt(method_class, tiny_components, tokenizer):
    config_class = MasaCtrlConfig if method_class is MasaCtrlMethod else FPEConfig
    encoder = tiny_components["text_encoder"]
    e_src, e_tgt, e_empty = encode_prompts(encoder, tokenizer, ["cat", "tiger", ""])
    ctx = context(tiny_components, tokenizer)
    plan = method_class(config_class()).plan(ctx)
    assert ctx.state.layout == FOUR_ROWS and plan.row_embeddings.shape[0] == 4
    assert torch.allclose(plan.inversion_embedding, e_src) and torch.allclose(plan.uncond_embedding, e_empty)
    assert torch.allclose(plan.row_embeddings[FOUR_ROWS.index(TARGET, True)], e_tgt)
    empty = method_class(config_class(inversion_prompt="empty")).plan(ctx)
    assert torch.allclose(empty.inversion_embedding, e_empty) and empty.source_prompt == ""
    assert torch.allclose(empty.row_embeddings[FOUR_ROWS.index(SOURCE, True)], e_empty)


def test_mask_guided_plans(tiny_components, tokenizer):
    from aledit.attention.cross_control import CrossAttentionControlProcessor
    from aledit.masks.ops import ObjectMasks

    ctx = context(tiny_components, tokenizer)
    cross = next(n for n in tiny_components["unet"].attn_processors if n.endswith("attn2.processor"))
    chosen = masactrl_layers(ctx.attention_layers)
    auto = MasaCtrlMethod(MasaCtrlConfig(mask_guided=True)).plan(ctx)
    assert isinstance(auto.choose_processor(chosen[0], None), MaskedMutualSelfAttentionProcessor)
    assert isinstance(auto.choose_processor(cross, None), CrossAttentionControlProcessor)  # feeds the maps
    given = ObjectMasks(torch.ones(1, 64, 64, dtype=torch.bool), ("cat",))
    with_masks = MasaCtrlMethod(MasaCtrlConfig(mask_guided=True)).plan(dataclasses.replace(ctx, masks=given))
    assert isinstance(with_masks.choose_processor(chosen[0], None).masks, GivenMasks)
    assert with_masks.choose_processor(cross, "own") == "own"
    with pytest.raises(ValueError, match="inversion_prompt='empty'"):
        MasaCtrlMethod(MasaCtrlConfig(mask_guided=True, inversion_prompt="empty")).plan(ctx)


def test_registry_entries():
    assert method_info("masactrl").default_model == "CompVis/stable-diffusion-v1-4"
    assert method_info("fpe").default_model.endswith("stable-diffusion-v1-5")
    assert method_info("masactrl").masks == "optional" and method_info("fpe").masks == "unused"
    assert (method_info("masactrl").default_steps, method_info("fpe").default_size) == (50, 512)


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("masactrl", {"start_step": -1}, "start_step"),
        ("masactrl", {"start_step": 1.5}, "start_step"),
        ("masactrl", {"end_step": 4}, "end_step"),
        ("masactrl", {"start_layer": -2}, "start_layer"),
        ("masactrl", {"inversion_prompt": "null"}, "inversion_prompt"),
        ("masactrl", {"guidance": float("nan")}, "guidance"),
        ("masactrl", {"mask_threshold": 1.5}, "mask_threshold"),
        ("masactrl", {"mask_guided": "yes"}, "mask_guided"),
        ("fpe", {"self_replace": 1.2}, "self_replace"),
        ("fpe", {"self_replace": -0.1}, "self_replace"),
        ("fpe", {"guidance": float("inf")}, "guidance"),
        ("fpe", {"inversion_prompt": "none"}, "inversion_prompt"),
        ("fpe", {"max_layer_tokens": 0}, "max_layer_tokens"),
    ],
)
def test_bad_config_values_are_one_line_errors(name, options, field):
    with pytest.raises(MethodError) as info:
        make_config(name, options)
    message = str(info.value)
    assert field in message and "\n" not in message


# -- end to end on tiny-random (DDIM) --------------------------------------------------------


class Spied:
    """A method whose chosen processors pass through ``wrap(name, chosen, current, state)``."""

    def __init__(self, method, wrap):
        self.inner, self.wrap = method, wrap
        self.name, self.masks, self.config = method.name, method.masks, method.config

    @property
    def guidance(self):
        return self.inner.guidance

    @property
    def dilation_ratio(self):
        return self.inner.dilation_ratio

    def sampler(self, scheduler, num_steps):
        return self.inner.sampler(scheduler, num_steps)

    def plan(self, ctx):
        plan = self.inner.plan(ctx)
        choose = plan.choose_processor
        return dataclasses.replace(plan, choose_processor=lambda n, c: self.wrap(n, choose(n, c), c, ctx.state))


class Watch(EditAttnProcessor):
    """Delegates to ``inner`` and shows every self-attention call to
    ``check(state, name, attn, query, key, value, out)``."""

    def __init__(self, name, inner, state, check):
        self.name, self.inner, self.state, self.check = name, inner, state, check

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        out = self.inner.attend(attn, query, key, value, attention_mask, is_cross)
        if not is_cross:
            self.check(self.state, self.name, attn, query, key, value, out)
        return out


def watching(check):
    """A ``wrap`` for :class:`Spied` that watches the method's mutual self-attention layers."""

    def wrap(name, chosen, current, state):
        return Watch(name, chosen, state, check) if isinstance(chosen, MutualSelfAttentionProcessor) else chosen

    return wrap


def attention(query, key, value, attn):
    return F.scaled_dot_product_attention(query, key, value, scale=attn.scale)


def scene():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    return image, {"cat": mask}


@pytest.fixture(scope="module")
def edit_pipe():
    from aledit.pipeline import EditPipeline

    return EditPipeline.from_pretrained("tiny-random")


def run(pipe, method, steps=3, masks=None):
    image, _ = scene()
    return pipe.edit(image, ["cat -> tiger"], masks, method=method, steps=steps, size=64, progress=False)


def unedited(method):
    """The same method with none of its processors installed (the UNet's own attention)."""
    return Spied(method, lambda name, chosen, current, state: current)


@pytest.mark.parametrize(
    "method",
    [MasaCtrlMethod(MasaCtrlConfig(start_step=3)), FPEMethod(FPEConfig(self_replace=0.0))],
    ids=["masactrl", "fpe"],
)
def test_controls_that_never_act_leave_the_target_bit_for_bit(edit_pipe, method):
    """Reference: the same method, plan, prompts and sampler, with the UNet's own processors on
    every layer instead of the method's; MasaCtrl starting at step 3 of 3 and FPE replacing in
    0% of the steps install processors that never act, so the target must match exactly."""
    out = run(edit_pipe, method)
    ref = run(edit_pipe, unedited(method))
    assert torch.equal(out.latents.target_x0, ref.latents.target_x0)
    assert torch.equal(out.latents.target, ref.latents.target)


def test_masactrl_target_reads_source_keys_and_values_in_every_layer_and_step(edit_pipe):
    seen, mismatches = set(), []

    def check(state, name, attn, query, key, value, out):
        layout = state.layout
        for row in layout.rows_of(TARGET):
            src = layout.source_partner(row)
            if not torch.allclose(out[row], attention(query[row], key[src], value[src], attn), atol=1e-5):
                mismatches.append((name, state.step, row))
        seen.add((name, state.step))

    method = MasaCtrlMethod(MasaCtrlConfig(start_step=0, start_layer=0))
    out = run(edit_pipe, Spied(method, watching(check)), steps=3)
    names = self_attention_order(edit_pipe.unet.attn_processors)
    assert seen == {(n, s) for n in names for s in range(3)}
    assert not mismatches
    # and it changes the edit relative to the uncontrolled run
    assert not torch.equal(out.latents.target_x0, run(edit_pipe, unedited(method), steps=3).latents.target_x0)


def test_fpe_replaces_self_attention_maps_only_in_small_layers_and_early_steps(edit_pipe):
    active, wrong = set(), []

    def check(state, name, attn, query, key, value, out):
        layout = state.layout
        tgt, uncond = layout.index(TARGET, True), layout.index(TARGET, False)
        src = layout.source_partner(tgt)
        borrowed = attention(query[src], key[src], value[tgt], attn)  # source maps, target values
        own = attention(query[tgt], key[tgt], value[tgt], attn)
        if not torch.allclose(out[uncond], attention(query[uncond], key[uncond], value[uncond], attn), atol=1e-5):
            wrong.append(("unconditional row changed", name, state.step))
        if torch.allclose(out[tgt], borrowed, atol=1e-5) and not torch.allclose(borrowed, own, atol=1e-5):
            active.add((name, state.step, query.shape[2]))
        elif not torch.allclose(out[tgt], own, atol=1e-5):
            wrong.append(("neither own nor borrowed", name, state.step))

    method = FPEMethod(FPEConfig(max_layer_tokens=8 * 8))  # the 8x8 layers of a 16x16 latent
    run(edit_pipe, Spied(method, watching(check)), steps=5)  # self_replace 0.8 of 5: steps 0..3
    assert not wrong
    names = self_attention_order(edit_pipe.unet.attn_processors)
    small = [n for n in names if not n.startswith(("down_blocks.0.", "up_blocks.1."))]  # 8x8 levels
    assert {(n, s) for n, s, _ in active} == {(n, s) for n in small for s in range(4)}
    assert all(tokens <= 64 for _, _, tokens in active)


@pytest.mark.parametrize("given", [True, False], ids=["given-masks", "attention-masks"])
def test_mask_guided_masactrl_runs_and_differs_from_plain(edit_pipe, given):
    _, masks = scene()
    masks = masks if given else None
    guided = run(edit_pipe, MasaCtrlMethod(MasaCtrlConfig(start_step=0, mask_guided=True)), masks=masks)
    plain = run(edit_pipe, MasaCtrlMethod(MasaCtrlConfig(start_step=0)), masks=masks)
    assert torch.isfinite(guided.latents.target_x0).all()
    assert not torch.equal(guided.latents.target_x0, plain.latents.target_x0)


def test_fpe_null_text_variant_runs(edit_pipe):
    out = run(edit_pipe, FPEMethod(FPEConfig(null_text=True, feed_source=False)), steps=2)
    assert out.method == "fpe" and out.self_replace == 0.8
    assert torch.isfinite(out.latents.target_x0).all()
