import math

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.attention import BatchLayout, EditState
from aledit.attention.binding import BindingCrossAttentionProcessor, RegionRebalance
from aledit.attention.schedule import StepWindow
from aledit.binding import (
    cross_leakage_energy,
    guided_latent,
    new_token_positions,
    object_maps,
    rebalance_bias,
    region_fidelity_energy,
    self_leakage_energy,
)
from aledit.methods import MethodError, method_info
from aledit.methods.bindedit import BindEditConfig
from aledit.methods.registry import make_config, parse_options

EDITS = ["cat -> red cat", "dog -> tiger"]
REGIONS = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)


def scene(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    cat = np.zeros((size, size), bool)
    cat[4:30, 4:30] = True
    dog = np.zeros((size, size), bool)
    dog[34:60, 30:62] = True
    return img, {"cat": cat, "dog": dog}


def run(pipe, method="bindedit", **options):
    img, masks = scene()
    return pipe.edit(img, EDITS, masks, method=method, options=options, size=64, steps=4, progress=False)


# -- energies on planted maps -------------------------------------------------------------------


def test_cross_leakage_energy_is_the_mass_outside_each_region():
    maps = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 0.0, 1.0]])
    # object 0: 7 of 10 outside {0, 1}; object 1: 4 of 5 outside {2, 3}
    assert cross_leakage_energy(maps, REGIONS).item() == pytest.approx((0.7 + 0.8) / 2)
    inside = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    assert cross_leakage_energy(inside, REGIONS).item() == pytest.approx(0.0, abs=1e-7)


def test_self_leakage_energy_is_the_flow_to_other_regions():
    regions = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)  # cell 1 shared
    s = torch.tensor(
        [
            [0.5, 0.1, 0.2, 0.1, 0.1],
            [0.2, 0.2, 0.4, 0.0, 0.2],
            [0.3, 0.3, 0.2, 0.1, 0.1],
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    # object 0: other cells outside region 0 = {2}; queries 0, 1 -> (0.2 + 0.4) / 2
    # object 1: other cells outside region 1 = {0}; queries 1, 2 -> (0.2 + 0.3) / 2
    assert self_leakage_energy(s, regions).item() == pytest.approx((0.3 + 0.25) / 2)


def test_region_fidelity_energy_is_the_squared_cv_inside_the_region():
    maps = torch.tensor([[1.0, 3.0, 9.0, 9.0], [5.0, 5.0, 2.0, 2.0]])
    # object 0 inside: [1, 3], mean 2, CV^2 = ((0.5 - 1)^2 + (1.5 - 1)^2) / 2 = 0.25; object 1 uniform
    assert region_fidelity_energy(maps, REGIONS).item() == pytest.approx(0.125)


def test_object_maps_average_heads_and_tokens():
    probs = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    maps = object_maps(probs, ((1, 2), (4,)))
    assert torch.allclose(maps[0], probs[:, :, 1:3].mean(dim=(0, 2)))
    assert torch.allclose(maps[1], probs[:, :, 4].mean(dim=0))


@pytest.mark.parametrize("energy", ["cross", "self", "fidelity"])
def test_one_gradient_step_lowers_each_energy(energy):
    torch.manual_seed(0)
    hw, tokens = 16, 6
    regions = torch.zeros(2, hw, dtype=torch.bool)
    regions[0, :6], regions[1, 9:14] = True, True
    logits = torch.randn(1, 1, hw, tokens if energy != "self" else hw, requires_grad=True)

    def value(x):
        probs = x[0].softmax(dim=-1)  # [heads=1, HW, T or HW]
        if energy == "self":
            return self_leakage_energy(probs.mean(dim=0), regions)
        maps = object_maps(probs, ((1, 2), (4,)))
        return (cross_leakage_energy if energy == "cross" else region_fidelity_energy)(maps, regions)

    before = value(logits)
    (grad,) = torch.autograd.grad(before, logits)
    moved = guided_latent(logits.detach(), grad, step_size=0.1, noise_level=1.0)
    assert value(moved).item() < before.item()
    # the step has the asked size: rms of the change = step_size * noise_level
    assert (moved - logits).square().mean().sqrt().item() == pytest.approx(0.1, rel=1e-5)


def test_guided_latent_leaves_a_zero_gradient_alone():
    x = torch.randn(1, 4, 3, 3)
    assert guided_latent(x, torch.zeros_like(x), 0.5, 1.0) is x


# -- re-balancing -------------------------------------------------------------------------------


def test_rebalance_scales_the_chosen_tokens_inside_their_region_only():
    torch.manual_seed(0)
    scale, tokens = 3.0, 7
    logits = torch.randn(2, 4, tokens)  # [heads, HW, T]
    token_sets = ((2,), (4, 5))
    bias = rebalance_bias(REGIONS, token_sets, scale, tokens)
    before, after = logits.softmax(-1), (logits + bias).softmax(-1)
    ratio = after / before
    for k, region in enumerate(REGIONS):
        chosen = torch.zeros(tokens, dtype=torch.bool)
        chosen[list(token_sets[k])] = True
        inside = ratio[:, region]  # [heads, cells, T]
        # inside: chosen tokens scaled by s relative to every other token, then renormalised
        z = 1 + (scale - 1) * before[:, region][..., chosen].sum(-1, keepdim=True)
        assert torch.allclose(inside[..., chosen], scale / z.expand_as(inside[..., chosen]), rtol=1e-5)
        assert torch.allclose(inside[..., ~chosen], 1 / z.expand_as(inside[..., ~chosen]), rtol=1e-5)
    assert torch.equal(bias[~REGIONS.any(0)], torch.zeros_like(bias[~REGIONS.any(0)]))
    assert torch.allclose(after.sum(-1), torch.ones(2, 4))
    assert (bias != 0).sum().item() == 2 * 1 + 2 * 2  # cells x tokens, nothing else


def test_rebalance_processor_changes_only_the_target_conditional_row():
    torch.manual_seed(0)
    layout = BatchLayout.dual_branch(source_uncond=False, target_uncond=True)
    state = EditState(layout=layout, num_steps=4, latent_hw=(2, 2))
    masks = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.bool)
    rebalance = RegionRebalance(masks, ((3,),), 4.0, StepWindow(0.0, 1.0))

    class Attn:
        scale = 0.5

    q, k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    plain = BindingCrossAttentionProcessor(state).attend(Attn, q, k, v, None, True)
    out = BindingCrossAttentionProcessor(state, rebalance).attend(Attn, q, k, v, None, True)
    row = layout.index("target", True)
    for i in range(3):
        if i != row:
            assert torch.equal(out[i], plain[i])
    logits = q[row] @ k[row].transpose(-1, -2) * 0.5
    logits[:, :2, 3] += math.log(4.0)
    assert torch.allclose(out[row], logits.softmax(-1) @ v[row], atol=1e-6)
    assert torch.allclose(out[row][:, 2:], plain[row][:, 2:], atol=1e-6)  # outside the region: unchanged
    state.step = 3
    late = BindingCrossAttentionProcessor(state, RegionRebalance(masks, ((3,),), 4.0, StepWindow(0.0, 0.5)))
    assert torch.equal(late.attend(Attn, q, k, v, None, True), plain)  # outside its window: plain


def test_new_token_positions():
    assert new_token_positions([10, 11], [0, 5, 11, 9], (1, 3)) == (1,)
    assert new_token_positions([10], [0, 10, 9], (1, 2)) == ()


# -- the method ---------------------------------------------------------------------------------


def test_all_terms_off_is_the_plain_dual_branch_edit_bit_for_bit(pipe):
    off = run(pipe, binding=False, rebalance=False, fidelity=False)
    plain = run(pipe, "ale", ore=False, rgb_cam=False, background_blend=False)
    assert torch.equal(off.latents.target_x0, plain.latents.target_x0)
    assert torch.equal(off.latents.source, plain.latents.source)
    assert off.extras == {"inversion_stats": {}}  # no guidance ran
    # a step size of 0 switches the guidance off too
    assert torch.equal(run(pipe, rebalance=False, step_size=0.0).latents.target_x0, plain.latents.target_x0)


def test_guided_edit_counts_its_passes_and_leaves_parameters_alone(pipe):
    out = run(pipe, guidance_steps=0.5, guidance_iterations=2, rebalance=True, fidelity=True)
    assert out.extras["guidance_stats"] == {"forward": 4, "backward": 4}  # steps 0, 1 x 2 iterations
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert not torch.equal(out.latents.target_x0, run(pipe, binding=False, fidelity=False).latents.target_x0)


def test_guidance_lowers_the_energy_on_a_unet(pipe):
    from aledit.hooks.attention_guidance import AttentionGuidance

    seen = {}
    original = AttentionGuidance.__call__

    def spy(self, step, t, latents, predict):
        seen["guide"] = self
        return original(self, step, t, latents, predict)

    AttentionGuidance.__call__ = spy
    try:
        run(pipe, rebalance=False, fidelity=False, guidance_steps=0.25, guidance_iterations=2, step_size=0.02,
            guidance_resolution=1.0)
    finally:
        AttentionGuidance.__call__ = original
    (s0, e0), (s1, e1) = seen["guide"].energies
    assert s0 == s1 == 0 and e1 < e0


def test_rebalance_changes_the_edit_and_records_attention(pipe):
    off = run(pipe, binding=False, fidelity=False, rebalance=False)
    img, masks = scene()
    on = pipe.edit(img, EDITS, masks, method="bindedit", options={"binding": False, "rebalance": True},
                   size=64, steps=4, progress=False, return_attention=True)
    assert not torch.equal(on.latents.target_x0, off.latents.target_x0)
    assert on.attention_maps.shape[0] == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"step_size": -0.1}, "step_size"),
        ({"guidance_iterations": 0}, "guidance_iterations"),
        ({"rebalance_scale": 0.0}, "rebalance_scale"),
        ({"binding": 1}, "binding"),
        ({"guidance_steps": 1.5}, "guidance_steps"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(MethodError, match=match):
        make_config("bindedit", options)


def test_registry_and_cli_options():
    info = method_info("bindedit")
    assert info.masks == "required" and info.default_steps == 15
    assert parse_options("bindedit", ["binding=off", "step_size=0.3"]) == {"binding": False, "step_size": 0.3}
    assert BindEditConfig(binding=False, fidelity=False).guided is False


def test_masks_are_required_before_anything_runs(pipe):
    from aledit.masks.ops import MaskError

    img, _ = scene()
    with pytest.raises(MaskError, match="bindedit"):
        pipe.edit(img, EDITS, None, method="bindedit", size=64, steps=2, progress=False)
