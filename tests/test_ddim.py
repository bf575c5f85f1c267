"""DDIM engine: the pure step, P2P's timesteps and alphas, inversion and reconstruction with the
tiny random UNet, null-text inversion, the dual-branch loop (hooks, feed_source) and the cache."""

import logging
import math
import os

import pytest
import torch
from diffusers import DDIMScheduler

from aledit.attention import BatchLayout, EditState
from aledit.ore import encode_prompts
from aledit.samplers import (
    DDIMInversion,
    DDIMInversionConfig,
    DDIMSamplerConfig,
    DualBranchDDIMSampler,
    Inversion,
    InversionCache,
    NullTextConfig,
    NullTextInversion,
    ddim_level_alphas,
    ddim_step,
    ddim_timesteps,
    ddim_x0,
    tensor_digest,
)

# Prompt-to-Prompt's scheduler
P2P_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


def relative_error(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


def latent(seed, scale=1.0, hw=8):
    return scale * torch.randn(1, 4, hw, hw, generator=torch.Generator().manual_seed(seed))


def state_for(num_steps, hw=8):
    return EditState(layout=BatchLayout.dual_branch(False, False), num_steps=num_steps, latent_hw=(hw, hw))


@pytest.fixture(scope="module")
def model(tiny_components):
    """``(unet_eps, scheduler, cond [1, 77, 32], uncond [1, 77, 32])`` of the tiny UNet."""
    c = tiny_components
    unet = c["unet"]
    with torch.no_grad():
        cond, uncond = encode_prompts(c["text_encoder"], c["tokenizer"], ["a cat", ""]).split(1)

    def unet_eps(x, t, e):
        return unet(x, t, encoder_hidden_states=e).sample

    return unet_eps, c["scheduler"], cond, uncond


def guided_predictor(unet_eps, cond, uncond, guidance, null_embeddings=None):
    """Both branches with the source prompt; the unconditional embedding of step ``i`` is
    ``null_embeddings[i]`` when given (what the pipeline does with the step index)."""

    def predict(x_s, x_t, t, i):
        x = torch.cat([x_s, x_t])
        u = null_embeddings[i] if null_embeddings is not None else uncond
        e_c = unet_eps(x, t, cond.expand(2, -1, -1))
        if guidance == 1:
            return e_c[:1], e_c[1:]
        e_u = unet_eps(x, t, u.expand(2, -1, -1))
        e = e_u + guidance * (e_c - e_u)
        return e[:1], e[1:]

    return predict


@torch.no_grad()
def invert(unet_eps, scheduler, x0, cond, num_steps):
    return DDIMInversion(scheduler, DDIMInversionConfig(num_steps=num_steps)).invert(x0, unet_eps, cond, progress=False)


def reconstruct(inversion, scheduler, predict, **config):
    sampler = DualBranchDDIMSampler(scheduler, DDIMSamplerConfig(num_steps=inversion.num_steps, **config))
    return sampler.sample(inversion, predict, state_for(inversion.num_steps), progress=False)


# -- the pure step ------------------------------------------------------------------------------


def test_ddim_step_known_answer_on_scalars():
    x, eps = torch.tensor(1.0), torch.tensor(0.5)
    x0 = (1 - math.sqrt(0.75) * 0.5) / 0.5
    assert ddim_x0(x, eps, 0.25).item() == pytest.approx(x0, abs=1e-6)
    assert ddim_step(x, eps, 0.25, 0.64).item() == pytest.approx(0.8 * x0 + 0.6 * 0.5, abs=1e-6)
    # to the same level: the identity
    assert ddim_step(x, eps, torch.tensor(0.3), torch.tensor(0.3)).item() == pytest.approx(1.0, abs=1e-6)


def test_inversion_step_then_denoising_step_with_the_same_noise_is_the_identity():
    x, eps = latent(0), latent(1)
    for a_clean, a_noisy in [(0.9991, 0.93), (0.6, 0.05), (0.2, 0.0047)]:
        up = ddim_step(x, eps, a_clean, a_noisy)
        assert not torch.allclose(up, x)
        assert torch.allclose(ddim_step(up, eps, a_noisy, a_clean), x, atol=1e-5)


def test_ddim_step_keeps_fp16_latents_and_full_precision_alphas():
    x, eps = latent(0).half(), latent(1).half()
    a_t, a_next = torch.tensor(0.5), torch.tensor(0.99915)  # 1 - a_next is 8.5e-4
    out = ddim_step(x, eps, a_t, a_next)
    assert out.dtype == torch.float16
    ref = ddim_step(x.float(), eps.float(), a_t.double(), a_next.double())
    assert torch.allclose(out.float(), ref.float(), atol=1e-2)


# -- timesteps and alphas -----------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 3, 7, 10, 50, 999])
def test_timesteps_are_ddim_schedulers_with_steps_offset_1(num_steps):
    ddim = DDIMScheduler(**P2P_SCHEDULER)
    ddim.set_timesteps(num_steps)
    ours = ddim_timesteps(num_steps, ddim.config.num_train_timesteps)
    assert ours.dtype == torch.long
    assert torch.equal(ours, ddim.timesteps)


def test_timesteps_refuse_more_steps_than_alphas():
    with pytest.raises(ValueError, match="at most 999"):
        ddim_timesteps(1000)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(0)


@pytest.mark.parametrize("num_steps", [1, 7, 10, 50, 999])
def test_level_alphas_follow_p2p(tiny_components, num_steps):
    """P2P's ``prev_step``: ``a_prev = alphas_cumprod[t - T // N]``, or ``final_alpha_cumprod``
    below 0; the LCM scheduler of the pipeline has the same alphas as P2P's DDIM scheduler."""
    ddim = DDIMScheduler(**P2P_SCHEDULER)
    ddim.set_timesteps(num_steps)
    lcm = tiny_components["scheduler"]
    assert torch.equal(lcm.alphas_cumprod, ddim.alphas_cumprod)
    levels = ddim_level_alphas(lcm.alphas_cumprod, ddim.timesteps, 1000)
    assert levels.shape == (num_steps + 1,)
    for i, t in enumerate(ddim.timesteps.tolist()):
        prev = t - 1000 // num_steps
        a_prev = ddim.alphas_cumprod[prev] if prev >= 0 else ddim.final_alpha_cumprod
        assert levels[num_steps - i] == ddim.alphas_cumprod[t]
        assert levels[num_steps - 1 - i] == a_prev
    assert levels[0] == ddim.final_alpha_cumprod


# -- inversion and reconstruction ---------------------------------------------------------------


def p2p_ddim_loop(unet_eps, scheduler, x0, cond, num_steps):
    """google/prompt-to-prompt's ``ddim_loop`` and ``next_step``, line by line."""
    scheduler.set_timesteps(num_steps)
    latents, x = [x0], x0.clone()
    for i in range(num_steps):
        t = scheduler.timesteps[len(scheduler.timesteps) - i - 1]
        eps = unet_eps(x, t, cond)
        timestep, next_timestep = min(t - 1000 // num_steps, 999), t
        a_t = scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod
        a_next = scheduler.alphas_cumprod[next_timestep]
        x0_pred = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x = a_next**0.5 * x0_pred + (1 - a_next) ** 0.5 * eps
        latents.append(x)
    return latents


@torch.no_grad()
def test_inversion_matches_p2p_ddim_loop(model):
    unet_eps, scheduler, cond, _ = model
    x0 = latent(0)
    inversion = invert(unet_eps, scheduler, x0, cond, 7)
    reference = p2p_ddim_loop(unet_eps, DDIMScheduler(**P2P_SCHEDULER), x0, cond, 7)
    assert len(inversion.latents) == 8 and inversion.latents[0] is x0
    for ours, ref in zip(inversion.latents, reference):
        assert torch.allclose(ours, ref, atol=1e-5)
    assert inversion.stats == {"forward": 7, "backward": 0}
    assert inversion.null_embeddings is None
    # indexing: at_step(i) is the latent after denoising step i
    assert inversion.at_step(0) is inversion.latents[6] and inversion.at_step(6) is x0
    with pytest.raises(IndexError):
        inversion.at_step(7)


@torch.no_grad()
def test_reconstruction_is_exact_when_the_noise_does_not_depend_on_the_latent(tiny_components):
    """With ``eps`` a function of the timestep alone, inversion step ``i`` and denoising step
    ``N - 1 - i`` use the same ``eps`` (the timestep of the noisier level), so the round trip is
    exact; any misaligned timestep or level breaks it."""
    scheduler = tiny_components["scheduler"]
    table = torch.randn(1000, 1, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def eps_of_t(x, t, e):
        return table[int(t)].expand_as(x)

    x0 = latent(0)
    inversion = invert(eps_of_t, scheduler, x0, None, 10)
    out = reconstruct(inversion, scheduler, lambda x_s, x_t, t, i: (eps_of_t(x_s, t, None), eps_of_t(x_t, t, None)))
    assert torch.allclose(out.target_x0, x0, atol=1e-5)
    assert torch.equal(out.target_x0, out.target) and torch.equal(out.source_x0, out.source)


@torch.no_grad()
def test_tiny_unet_reconstruction_at_guidance_1_improves_with_steps(model):
    """The tiny random UNet is no denoiser (its eps barely depends on x, ~0.35 rms, and x_T keeps
    only sqrt(a_T) = 0.068 of x0), so DDIM's first-order error is large: measured relative
    errors 0.757 (10 steps), 0.404 (30 steps), 0.251 (50 steps). Asserted with margin, and
    that the error falls with the step count, as DDIM's discretisation error does."""
    unet_eps, scheduler, cond, uncond = model
    x0 = latent(0)
    errors = {}
    for n in (10, 30):
        inversion = invert(unet_eps, scheduler, x0, cond, n)
        out = reconstruct(inversion, scheduler, guided_predictor(unet_eps, cond, uncond, 1.0))
        assert torch.equal(out.source, out.target)  # same prompt, same noise, no controls
        errors[n] = relative_error(out.target_x0, x0)
    assert errors[10] < 0.85
    assert errors[30] < 0.5
    assert errors[30] < 0.65 * errors[10]


# -- null-text inversion ------------------------------------------------------------------------

NTI_STEPS = 10


@pytest.fixture(scope="module")
def inversions(model):
    """DDIM inversion (10 steps) of a latent, and its null-text inversion.

    NTI runs with lr 0.1 instead of P2P's 0.01: the tiny UNet's eps moves ~50x less with the
    text embedding than SD's (cond vs uncond: 0.017 rms), so at 0.01 ten Adam steps cannot move
    the embedding far enough (measured ratio E1/E0 0.38-0.53 over seeds 0-3 at 0.01,
    0.16-0.24 at 0.1)."""
    unet_eps, scheduler, cond, uncond = model
    x0 = latent(0, scale=0.5)
    ddim = invert(unet_eps, scheduler, x0, cond, NTI_STEPS)
    calls = {"forward": 0, "backward": 0}

    def counting_eps(x, t, e):
        calls["forward"] += 1
        calls["backward"] += int(torch.is_grad_enabled() and e.requires_grad)
        return unet_eps(x, t, e)

    nti = NullTextInversion(NullTextConfig(lr=0.1)).optimize(ddim, counting_eps, cond, uncond, progress=False)
    return x0, ddim, nti, calls


def test_null_text_inversion_halves_the_guided_reconstruction_error(model, inversions):
    """Measured (seed 0): E0 = 2.54 (guidance 7.5, "" embedding), E1 = 0.40 (optimised
    nulls), ratio 0.156."""
    unet_eps, scheduler, cond, uncond = model
    x0, ddim, nti, _ = inversions
    with torch.no_grad():
        e0 = relative_error(reconstruct(ddim, scheduler, guided_predictor(unet_eps, cond, uncond, 7.5)).target_x0, x0)
        nulls = guided_predictor(unet_eps, cond, uncond, 7.5, nti.null_embeddings)
        e1 = relative_error(reconstruct(nti, scheduler, nulls).target_x0, x0)
    assert e1 < 0.5 * e0


def test_null_text_inversion_keeps_the_inversion_and_fills_one_null_per_step(model, inversions):
    _, _, _, uncond = model
    _, ddim, nti, _ = inversions
    assert nti.latents is ddim.latents and nti.timesteps is ddim.timesteps
    assert len(nti.null_embeddings) == NTI_STEPS
    for null in nti.null_embeddings:
        assert null.shape == uncond.shape and null.dtype == uncond.dtype and not null.requires_grad
    assert not torch.equal(nti.null_embeddings[0], uncond)


def test_null_text_inversion_counts_its_unet_passes(inversions):
    _, ddim, nti, calls = inversions
    # inversion: one pass per step; NTI: a conditional pass and a final pass per step, plus one
    # forward and one backward per inner iteration
    assert nti.stats["forward"] == ddim.stats["forward"] + calls["forward"]
    assert nti.stats["backward"] == calls["backward"]
    assert nti.stats["forward"] == 3 * NTI_STEPS + nti.stats["backward"]
    assert NTI_STEPS <= nti.stats["backward"] <= 10 * NTI_STEPS


def test_null_text_inversion_leaves_the_unet_untouched(tiny_components, inversions):
    unet = tiny_components["unet"]
    assert all(p.grad is None for p in unet.parameters())
    assert not unet.training


def test_null_text_early_stop_and_no_iterations(model):
    unet_eps, scheduler, cond, uncond = model
    ddim = invert(unet_eps, scheduler, latent(1), cond, 3)
    # a loss always under the threshold: one iteration per step
    once = NullTextInversion(NullTextConfig(early_stop_epsilon=1e9)).optimize(
        ddim, unet_eps, cond, uncond, progress=False
    )
    assert once.stats == {"forward": 3 + 3 * 3, "backward": 3}
    # no iterations: the nulls stay the given embedding
    none = NullTextInversion(NullTextConfig(inner_steps=0)).optimize(ddim, unet_eps, cond, uncond, progress=False)
    assert all(torch.equal(null, uncond) for null in none.null_embeddings)
    assert none.stats == {"forward": 3 + 2 * 3, "backward": 0}
    with pytest.raises(ValueError, match="lr_decay_steps >= 3"):
        NullTextInversion(NullTextConfig(lr_decay_steps=2)).optimize(ddim, unet_eps, cond, uncond, progress=False)


# -- the dual-branch loop -----------------------------------------------------------------------


def fake_inversion(num_steps=4, seed=0):
    timesteps = ddim_timesteps(num_steps)
    levels = ddim_level_alphas(DDIMScheduler(**P2P_SCHEDULER).alphas_cumprod, timesteps, 1000)
    g = torch.Generator().manual_seed(seed)
    latents = tuple(torch.randn(1, 4, 8, 8, generator=g) for _ in range(num_steps + 1))
    return Inversion(latents, timesteps, levels)


def fake_predictor(seen):
    """Records its inputs; a noise that depends on both the latent and the timestep."""

    def predict(x_s, x_t, t, i):
        seen.append((i, int(t), x_s.clone(), x_t.clone()))
        return 0.1 * x_s + t / 1000, 0.2 * x_t - t / 1000

    return predict


def test_loop_steps_both_branches_with_ddim_and_sets_the_state(tiny_components):
    scheduler = tiny_components["scheduler"]
    inversion = fake_inversion()
    seen, steps_seen = [], []
    state = state_for(99)
    predict = fake_predictor(seen)

    def watch(x_s, x_t, t, i):
        steps_seen.append((state.step, state.num_steps, state.alpha_t))
        return predict(x_s, x_t, t, i)

    sampler = DualBranchDDIMSampler(scheduler, DDIMSamplerConfig(num_steps=4))
    out = sampler.sample(inversion, watch, state, progress=False)
    alphas = [pytest.approx(float(scheduler.alphas_cumprod[t])) for t in inversion.timesteps]
    assert steps_seen == [(i, 4, alphas[i]) for i in range(4)]
    assert [(i, t) for i, t, _, _ in seen] == list(enumerate(inversion.timesteps.tolist()))
    assert torch.equal(seen[0][2], inversion.latents[-1]) and torch.equal(seen[0][3], inversion.latents[-1])
    # by hand: the target after step 0 is the input of step 1
    a = inversion.alphas
    _, t0, xs0, xt0 = seen[0]
    assert torch.allclose(seen[1][3], ddim_step(xt0, 0.2 * xt0 - t0 / 1000, a[4], a[3]), atol=1e-6)
    assert torch.allclose(seen[1][2], ddim_step(xs0, 0.1 * xs0 + t0 / 1000, a[4], a[3]), atol=1e-6)
    # the last step's x0 estimates are the final latents
    assert out.target_x0 is out.target and out.source_x0 is out.source


def test_hooks_run_once_per_step_in_order_and_the_loop_continues_from_their_latents(tiny_components):
    scheduler = tiny_components["scheduler"]
    inversion = fake_inversion()
    seen, calls = [], []

    def first(step, latents):
        calls.append(("first", step))
        return latents.replace(target=torch.full_like(latents.target, float(step)))

    def second(step, latents):
        calls.append(("second", step))
        assert torch.all(latents.target == step)  # sees what the first hook returned
        return latents.replace(source=latents.source + 1)

    sampler = DualBranchDDIMSampler(scheduler, DDIMSamplerConfig(num_steps=4))
    plain = sampler.sample(inversion, fake_predictor([]), state_for(4), progress=False)
    out = sampler.sample(inversion, fake_predictor(seen), state_for(4), hooks=(first, second), progress=False)
    assert calls == [(name, i) for i in range(4) for name in ("first", "second")]
    for i in range(1, 4):
        assert torch.all(seen[i][3] == i - 1)
    assert torch.all(out.target == 3)  # the hooked latents are returned
    assert not torch.equal(out.source, plain.source)


def test_feed_source_puts_the_inversion_latent_after_every_step(tiny_components):
    scheduler = tiny_components["scheduler"]
    inversion = fake_inversion()
    seen, after = [], []
    sampler = DualBranchDDIMSampler(scheduler, DDIMSamplerConfig(num_steps=4, feed_source=True))
    out = sampler.sample(
        inversion, fake_predictor(seen), state_for(4),
        hooks=(lambda i, lat: after.append((i, lat.source)) or lat,), progress=False,
    )
    for i, source in after:
        assert torch.equal(source, inversion.at_step(i))
    for i in range(1, 4):  # and the next step's source input
        assert torch.equal(seen[i][2], inversion.at_step(i - 1))
    assert torch.equal(out.source, inversion.latents[0]) and torch.equal(out.source_x0, inversion.latents[0])
    # the target does not follow
    assert not torch.equal(out.target, inversion.latents[0])


def test_sampler_refuses_an_inversion_of_another_length(tiny_components):
    sampler = DualBranchDDIMSampler(tiny_components["scheduler"], DDIMSamplerConfig(num_steps=5))
    with pytest.raises(ValueError, match="4 steps"):
        sampler.sample(fake_inversion(4), fake_predictor([]), state_for(5), progress=False)


def test_inversion_checks_its_lengths():
    good = fake_inversion(3)
    with pytest.raises(ValueError, match="4 latents"):
        Inversion(good.latents[:3], good.timesteps, good.alphas)
    with pytest.raises(ValueError, match="3 null embeddings"):
        Inversion(good.latents, good.timesteps, good.alphas, (torch.zeros(1, 77, 32),))


# -- cache --------------------------------------------------------------------------------------


def with_nulls(inversion, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    nulls = tuple(torch.randn(1, 77, 32, generator=g).to(dtype) for _ in range(inversion.num_steps))
    return Inversion(inversion.latents, inversion.timesteps, inversion.alphas, nulls, stats={"forward": 9})


@pytest.mark.parametrize("nulls", [False, True])
def test_cache_round_trip(tmp_path, nulls):
    cache = InversionCache(tmp_path / "inversions")
    inversion = with_nulls(fake_inversion(3)) if nulls else fake_inversion(3)
    key = cache.key(image="abc", model="tiny", prompt="a cat", steps=3)
    assert cache.load(key) is None
    cache.save(key, inversion)
    loaded = cache.load(key)
    assert len(loaded.latents) == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.latents, inversion.latents))
    assert torch.equal(loaded.timesteps, inversion.timesteps) and loaded.timesteps.dtype == torch.long
    assert torch.equal(loaded.alphas, inversion.alphas)
    if nulls:
        assert all(torch.equal(a, b) for a, b in zip(loaded.null_embeddings, inversion.null_embeddings))
    else:
        assert loaded.null_embeddings is None
    assert loaded.stats == {}  # a loaded inversion cost no UNet pass
    assert os.listdir(tmp_path / "inversions") == [f"{key}.safetensors"]  # no temporary file left


def test_cache_keeps_dtypes_and_memory_format(tmp_path):
    """The pipeline's VAE latents are channels-last and a conv's rounding depends on the memory
    format: a loaded inversion must have the fresh one's strides for an identical edit."""
    cache = InversionCache(tmp_path)
    inversion = with_nulls(fake_inversion(2), torch.float16)
    channels_last = tuple(x.contiguous(memory_format=torch.channels_last) for x in inversion.latents)
    cache.save("k", inversion)
    cache.save("cl", Inversion(channels_last, inversion.timesteps, inversion.alphas))
    assert cache.load("k").null_embeddings[0].dtype == torch.float16
    assert all(x.is_contiguous() for x in cache.load("k").latents)
    loaded = cache.load("cl").latents
    assert all(x.stride() == y.stride() and torch.equal(x, y) for x, y in zip(loaded, channels_last))


def test_cache_keys():
    parts = dict(image="abc", model="tiny", prompt="a cat", steps=50, nti={"guidance_scale": 7.5})
    key = InversionCache.key(**parts)
    assert len(key) == 64 and key == InversionCache.key(**dict(reversed(list(parts.items()))))
    for change in [dict(image="abd"), dict(model="other"), dict(prompt="a dog"), dict(steps=49),
                   dict(nti={"guidance_scale": 5.0}), dict(extra=1)]:
        assert InversionCache.key(**{**parts, **change}) != key
    x = latent(0)
    assert InversionCache.key(x0=x) == InversionCache.key(x0=x.clone()) != InversionCache.key(x0=x + 1)
    with pytest.raises(TypeError, match="key parts"):
        InversionCache.key(x0=object())


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", None])
def test_a_corrupt_cache_file_is_a_miss(tmp_path, caplog, content):
    cache = InversionCache(tmp_path)
    if content is None:  # a valid file cut in half
        cache.save("k", fake_inversion(3))
        data = open(cache.path("k"), "rb").read()
        content = data[: len(data) // 2]
    with open(cache.path("k"), "wb") as f:
        f.write(content)
    with caplog.at_level(logging.WARNING, logger="aledit.samplers.inversion_cache"):
        assert cache.load("k") is None
    assert "unreadable inversion cache file" in caplog.text


def test_tensor_digest():
    x = latent(0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.half())
    assert tensor_digest(x) != tensor_digest(x.reshape(1, 4, 4, 16))
    assert len(tensor_digest(torch.tensor(1.0, dtype=torch.bfloat16))) == 64
