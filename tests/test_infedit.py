import math

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.attention import BatchLayout, EditState
from aledit.attention.schedule import LeadingFraction
from aledit.hooks.local_blend import BlendRule
from aledit.methods import MethodContext, MethodError, method_info
from aledit.attention.schedule import UpToFraction
from aledit.methods.infedit import InfEditConfig, InfEditMethod
from aledit.methods.registry import make_config
from aledit.edits import Edit

EDITS = ["cat -> tiger", "dog -> leopard"]


def scene(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), bool)
    mask[8:40, 12:44] = True
    return img, mask


def run(pipe, masks=None, **options):
    img, _ = scene()
    return pipe.edit(img, EDITS, masks, method="infedit", options=options, size=64, steps=4, progress=False)


def test_schedules():
    up, lead = UpToFraction(0.7), LeadingFraction(0.7)
    assert [s for s in range(10) if up.active(s, 10)] == list(range(7))  # (i + 1) / N <= 0.7
    assert [s for s in range(10) if lead.active(s, 10)] == list(range(6))  # (i + 1) / N < 0.7


def test_target_threshold_follows_the_noise_level():
    rule = BlendRule(threshold=0.55, temperature=0.15)
    assert rule.target_threshold(0.01) == pytest.approx(1.5)  # early, noisy: nothing passes
    assert rule.target_threshold(0.9) == 0.55
    assert BlendRule(threshold=0.3).target_threshold(0.01) == 0.3


def test_end_to_end_edit_is_deterministic(pipe):
    img, _ = scene()
    out = pipe.edit(img, EDITS, method="infedit", size=64, steps=4, progress=False, return_attention=True)
    assert out.method == "infedit" and out.self_replace == 0.7
    assert out.extras["blend_mask"].shape == (16, 16) and out.attention_maps.shape == (2, 4, 4)
    again = pipe.edit(img, EDITS, method="infedit", size=64, steps=4, progress=False, return_attention=True)
    assert torch.equal(again.latents.target_x0, out.latents.target_x0)
    assert not torch.equal(out.latents.target_x0, out.latents.source_x0)


def test_blend_thresholds_at_their_extremes(pipe):
    # target threshold 1: the target mask is empty, the target is the source everywhere
    none = run(pipe, target_threshold=1.0)
    assert not none.extras["blend_mask"].any()
    assert torch.equal(none.latents.target_x0, none.latents.source_x0)
    # threshold 0 and no temperature: everything is edit region, as without the blend
    everything = run(pipe, target_threshold=0.0, blend_temperature=0.0)
    assert everything.extras["blend_mask"].all()
    unblended = run(pipe, local_blend=False)
    assert torch.equal(everything.latents.target_x0, unblended.latents.target_x0)
    # a preserved word whose mask covers everything: the source again
    kept = run(pipe, target_threshold=0.0, blend_temperature=0.0, preserve_words=("dog",), source_threshold=0.0)
    assert torch.equal(kept.latents.target_x0, kept.latents.source_x0)


def test_given_masks_replace_the_attention_mask(pipe):
    _, mask = scene()
    out = run(pipe, {"cat": mask, "dog": mask})
    region = out.masks.any(0)
    assert torch.equal(out.extras["blend_mask"], region)
    outside = (~region).expand_as(out.latents.target_x0[0])[None]
    assert torch.equal(out.latents.target_x0[outside], out.latents.source_x0[outside])


def test_samplers_give_the_blend_alpha_of_the_running_step(pipe):
    """InfEdit's threshold max(temp / sqrt(alpha_t), th) reads state.alpha_t, which the sampler sets
    to alphas_cumprod of each step's timestep before predicting the noise."""
    method = InfEditMethod()
    sampler = method.sampler(pipe.scheduler, 4)
    state = EditState(BatchLayout.dual_branch(False, True), 4, (16, 16))
    seen = []

    def predict(x_s, x_t, t, *step):
        seen.append((int(t), state.alpha_t))
        return torch.zeros_like(x_s), torch.zeros_like(x_t)

    x0 = torch.zeros(1, 4, 16, 16)
    sampler.sample(x0, predict, state, (), generator=torch.Generator().manual_seed(0), progress=False)
    assert len(seen) == 4
    for t, alpha in seen:
        assert alpha == pytest.approx(float(pipe.scheduler.alphas_cumprod[t]))
    assert seen[0][1] < seen[-1][1] <= 1


def test_plan_refines_and_pairs_swapped_words(pipe):
    state = EditState(BatchLayout.dual_branch(False, True), 4, (16, 16))
    edits = (Edit("cat", "tiger"),)
    for match in (False, True):
        method = InfEditMethod(InfEditConfig(match_replaced=match))
        plan = method.plan(MethodContext(pipe.text_encoder, pipe.tokenizer, edits, None, state))
        control = plan.choose_processor("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", None).control
        # "cat and ..." -> "tiger and ...": tiger (position 1) has no source counterpart, unless paired
        assert control.alphas[1] == float(match)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"cross_replace": 1.2}, "cross_replace must be in"),
        ({"target_guidance": float("nan")}, "target_guidance must be finite"),
        ({"blend_maps": "all"}, "blend_maps must be one of"),
        ({"target_threshold": -1.0}, "target_threshold must be in"),
        ({"preserve_words": "dog"}, "preserve_words must be a tuple"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match) as info:
        InfEditConfig(**options)
    assert "\n" not in str(info.value)
    with pytest.raises(MethodError, match=match):
        make_config("infedit", options)


def test_registry_entry_has_the_pie_bench_defaults():
    info = method_info("infedit")
    assert (info.default_steps, info.default_size, info.masks) == (12, 512, "optional")
    d = info.defaults()
    assert (d["target_guidance"], d["self_replace"], d["cross_replace"]) == (2.3, 0.7, 0.7)
    assert (d["target_threshold"], d["source_threshold"], d["source_guidance"]) == (0.55, 0.6, 1.0)
    assert not math.isnan(d["blend_temperature"])
