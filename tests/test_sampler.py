import numpy as np
import torch
from PIL import Image

from aledit import ALEConfig, ALEEditPipeline, Edit
from aledit.attention import BatchLayout, EditState
from aledit.attention.install import attention_processors
from aledit.hooks import BackgroundBlend
from aledit.masks import ObjectMasks
from aledit.methods import ALEMethod, MethodContext
from aledit.samplers import VirtualInversionConfig, VirtualInversionSampler, virtual_inversion_step

OFF = dict(ore=False, rgb_cam=False, background_blend=False, self_replace=0.0)


def scene(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), bool)
    mask[8:40, 12:44] = True
    return img, mask


def test_step_reconstructs_when_both_branches_agree():
    torch.manual_seed(0)
    x0, x, e, z = (torch.randn(1, 4, 8, 8) for _ in range(4))
    a, a_prev = torch.tensor(0.3), torch.tensor(0.6)
    out = virtual_inversion_step(x, x, x0, e, e, a, a_prev, z)
    assert torch.equal(out.target_x0, x0) and torch.equal(out.target, out.source)
    # eta = 1: the next latent is the x0 estimate noised with the shared noise
    assert torch.allclose(out.source, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * z, atol=1e-6)
    last = virtual_inversion_step(x, x, x0, e, e, a, a, None)
    assert torch.equal(last.target, x0)


def test_step_formula():
    torch.manual_seed(1)
    x0, xs, xt, es, et, z = (torch.randn(1, 4, 4, 4) for _ in range(6))
    a, ap, eta = torch.tensor(0.4), torch.tensor(0.7), 0.5
    out = virtual_inversion_step(xs, xt, x0, es, et, a, ap, z, eta=eta)
    ec = (xs - a.sqrt() * x0) / (1 - a).sqrt()
    x0t = x0 + ((xt - xs) - (1 - a).sqrt() * (et - es)) / a.sqrt()
    eps = (et - es) + ec
    s2 = eta * (1 - ap)
    assert torch.allclose(out.target_x0, x0t, atol=1e-6)
    assert torch.allclose(out.target, ap.sqrt() * x0t + (1 - ap - s2).sqrt() * eps + s2.sqrt() * z, atol=1e-6)
    assert torch.allclose(out.source, ap.sqrt() * x0 + (1 - ap - s2).sqrt() * eps + s2.sqrt() * z, atol=1e-6)


def test_background_blend_after_every_step_with_any_noise(tiny_components):
    torch.manual_seed(2)
    x0 = torch.randn(1, 4, 8, 8)
    background = torch.rand(8, 8) > 0.5
    seen = []

    def check(step, lat):
        seen.append(step)
        assert torch.equal(lat.target[..., background], lat.source[..., background])
        assert torch.equal(lat.target_x0[..., background], lat.source_x0[..., background])
        assert not torch.equal(lat.target, lat.source)
        return lat

    gen = torch.Generator().manual_seed(0)
    predict = lambda xs, xt, t: (torch.randn(xs.shape, generator=gen), torch.randn(xs.shape, generator=gen))
    sampler = VirtualInversionSampler(tiny_components["scheduler"], VirtualInversionConfig(num_steps=5))
    state = EditState(BatchLayout.dual_branch(False, True), 5, (8, 8))
    sampler.sample(x0, predict, state, [BackgroundBlend(background), check], progress=False)
    assert seen == [0, 1, 2, 3, 4]


def test_all_controls_off_and_same_prompt_reconstructs_the_source_latent(pipe):
    img, mask = scene()
    config = ALEConfig(**OFF, source_guidance=2.0, target_guidance=2.0)
    out = pipe.edit(img, [Edit("wolf", "wolf")], {"wolf": mask}, size=64, steps=4, config=config, progress=False)
    assert torch.equal(out.latents.target_x0, out.latents.source_x0)
    x0 = pipe._encode_image(img, 64, 64)
    assert torch.equal(out.latents.source_x0, x0)


def test_background_is_the_source_at_every_step_of_an_edit(pipe):
    img, mask = scene()
    steps = []

    def check(step, lat):
        steps.append(step)
        keep = out_background[None, None]
        assert torch.equal(lat.target[keep.expand_as(lat.target)], lat.source[keep.expand_as(lat.source)])

    out_background = ~ObjectMasks.from_sources({"wolf": mask}, ["wolf"], (64, 64), 0.01).at((16, 16))[0]
    out = pipe.edit(
        img, ["wolf -> pink-colored wolf"], {"wolf": mask}, size=64, steps=4, callback_on_step_end=check, progress=False
    )
    assert steps == [0, 1, 2, 3]
    assert torch.equal(out.background, out_background)
    bg = out.background.expand_as(out.latents.target_x0[0])[None]
    assert torch.equal(out.latents.target_x0[bg], out.latents.source_x0[bg])
    assert not torch.equal(out.latents.target_x0, out.latents.source_x0)


def test_target_branch_matches_diffusers_lcm_pipeline():
    """With every control off and the source correction off, the target branch is LCM sampling.

    Tolerance: 1e-4 on the final latent. InfEdit's step omits LCM's boundary scalings
    (c_skip, c_out), which differ from (0, 1) by < 1e-5 at t >= 19, and our UNet batch also
    holds the source row, which changes float rounding slightly.
    """
    from diffusers import LatentConsistencyModelPipeline

    from aledit.presets import tiny_random_components

    parts = tiny_random_components(seed=3, time_cond_proj_dim=32)
    lcm = LatentConsistencyModelPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    lcm.set_progress_bar_config(disable=True)
    expected = lcm(
        "pink-colored wolf", num_inference_steps=4, guidance_scale=3.0, height=64, width=64,
        generator=torch.Generator().manual_seed(7), output_type="latent",
    ).images

    pipe = ALEEditPipeline(**parts)
    img, mask = scene()
    config = ALEConfig(**OFF, guidance="embedded", target_guidance=3.0)
    edits = [Edit("wolf", "pink-colored wolf")]
    masks = ObjectMasks.from_sources({"wolf": mask}, ["wolf"], (64, 64))
    method = ALEMethod(config)
    state = EditState(method.guidance.layout(), 4, (16, 16))
    plan = method.plan(MethodContext(pipe.text_encoder, pipe.tokenizer, tuple(edits), masks, state))
    sampler = VirtualInversionSampler(pipe.scheduler, VirtualInversionConfig(num_steps=4, correct_target=False))
    with attention_processors(pipe.unet, plan.choose_processor):
        latents = sampler.sample(
            pipe._encode_image(img, 64, 64), pipe._noise_predictor(plan, state, method.guidance), state,
            generator=torch.Generator().manual_seed(7), progress=False,
        )
    assert latents.target_x0.shape == expected.shape
    assert torch.allclose(latents.target_x0, expected, atol=1e-4), (latents.target_x0 - expected).abs().max()
