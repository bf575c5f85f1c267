"""InfEdit's inversion-free dual-branch sampler ("virtual inversion") on an LCM schedule.

Both branches start from the same noise and share the noise drawn at every step. With ``x0`` the
clean source latent, ``a`` = alphas_cumprod, ``x_s``/``x_t`` the source/target latents and
``e_s``/``e_t`` their guided noise predictions, one step is::

    e_c   = (x_s - sqrt(a_t) x0) / sqrt(1 - a_t)            # noise that leads x_s exactly to x0
    x0_t  = x0 + ((x_t - x_s) - sqrt(1 - a_t) (e_t - e_s)) / sqrt(a_t)
    e     = (e_t - e_s) + e_c
    s^2   = eta (1 - a_prev)
    x_t'  = sqrt(a_prev) x0_t + sqrt(1 - a_prev - s^2) e + s z
    x_s'  = sqrt(a_prev) x0   + sqrt(1 - a_prev - s^2) e + s z

The source branch's reconstruction error ``e_s - e_c`` is subtracted from the target's noise, so
with the same prompt and no controls the target reproduces ``x0`` exactly. The image is decoded
from the last step's ``x0_t``. LCM's boundary-condition scalings (``c_skip``, ``c_out``) are not
applied, as in InfEdit; they differ from (0, 1) by less than 1e-5 for t >= 19.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..attention.state import EditState
from .base import BranchLatents, LatentGuide, LatentHook, NoisePredictor

__all__ = ["VirtualInversionConfig", "VirtualInversionSampler", "virtual_inversion_step"]


def virtual_inversion_step(
    x_s: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    e_s: torch.Tensor,
    e_t: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 1.0,
    correct_target: bool = True,
) -> BranchLatents:
    """One step of the dual-branch sampler (see the module docstring); pure.

    ``noise`` is ``None`` at the last step: both branches then return their x0 estimates.
    With ``correct_target=False`` the target ignores the source's error and is plain
    (LCM/DDIM-style) sampling from the shared noise.
    """
    sqrt_a, sqrt_1ma = alpha_t.sqrt(), (1 - alpha_t).sqrt()
    if correct_target:
        e_c = (x_s - sqrt_a * x0) / sqrt_1ma
        x0_t = x0 + ((x_t - x_s) - sqrt_1ma * (e_t - e_s)) / sqrt_a
        eps_t = (e_t - e_s) + e_c
        eps_s = eps_t
    else:
        x0_t = (x_t - sqrt_1ma * e_t) / sqrt_a
        eps_t = e_t
        eps_s = (x_s - sqrt_a * x0) / sqrt_1ma
    if noise is None:
        return BranchLatents(source=x0, target=x0_t, source_x0=x0, target_x0=x0_t)
    var = eta * (1 - alpha_prev)
    direction = (1 - alpha_prev - var).clamp_min(0).sqrt()
    sigma = var.sqrt()
    x_t_next = alpha_prev.sqrt() * x0_t + direction * eps_t + sigma * noise
    x_s_next = alpha_prev.sqrt() * x0 + direction * eps_s + sigma * noise
    return BranchLatents(source=x_s_next, target=x_t_next, source_x0=x0, target_x0=x0_t)


@dataclass(frozen=True)
class VirtualInversionConfig:
    """Settings of the sampler (paper appendix D: 15 steps; InfEdit: eta 1).

    Attributes:
        num_steps: denoising steps.
        eta: share of fresh noise per step (1 = LCM-style, 0 = deterministic).
        original_inference_steps: LCM's skipping-step schedule length.
        correct_target: subtract the source's reconstruction error from the target (virtual
            inversion). ``False`` only serves to compare against plain LCM sampling.
    """

    num_steps: int = 15
    eta: float = 1.0
    original_inference_steps: int = 50
    correct_target: bool = True


class VirtualInversionSampler:
    """Runs the dual-branch loop on a diffusers scheduler's timesteps (LCMScheduler).

    Latent guides (:class:`~.base.LatentGuide`) run before each step's noise prediction, hooks
    after each step.
    """

    supports_guides = True

    def __init__(self, scheduler, config: VirtualInversionConfig = VirtualInversionConfig()):
        self.scheduler = scheduler
        self.config = config

    def timesteps(self, device) -> torch.Tensor:
        kwargs = {}
        if "original_inference_steps" in self.scheduler.set_timesteps.__code__.co_varnames:
            kwargs["original_inference_steps"] = self.config.original_inference_steps
        self.scheduler.set_timesteps(self.config.num_steps, device=device, **kwargs)
        return self.scheduler.timesteps

    def prepare(self, x0: torch.Tensor, unet_eps=None, plan=None, *, progress: bool = True, cache=None) -> torch.Tensor:
        """Nothing to prepare: virtual inversion needs no inversion. Returns ``x0``."""
        return x0

    @torch.no_grad()
    def sample(
        self,
        x0: torch.Tensor,
        predict_noise: NoisePredictor,
        state: EditState,
        hooks: list[LatentHook] | tuple[LatentHook, ...] = (),
        generator: torch.Generator | None = None,
        progress: bool = True,
        guides: list[LatentGuide] | tuple[LatentGuide, ...] = (),
    ) -> BranchLatents:
        """Edits ``x0`` (clean source latent ``[1, C, h, w]``); returns the final latents."""
        timesteps = self.timesteps(x0.device)
        alphas = self.scheduler.alphas_cumprod.to(x0.device, torch.float32)
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        latents = BranchLatents(source=noise, target=noise, source_x0=x0, target_x0=x0)
        state.num_steps = len(timesteps)
        for i, t in enumerate(tqdm(timesteps, desc="editing", disable=not progress, leave=False)):
            state.step = i
            alpha_t = alphas[t].to(x0.dtype)
            state.alpha_t = float(alphas[t])
            for guide in guides:
                latents = guide(i, t, latents, predict_noise)
            e_s, e_t = predict_noise(latents.source, latents.target, t)
            last = i == len(timesteps) - 1
            alpha_prev = alpha_t if last else alphas[timesteps[i + 1]].to(x0.dtype)
            z = None if last else randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            latents = virtual_inversion_step(
                latents.source, latents.target, x0, e_s, e_t, alpha_t, alpha_prev, z,
                eta=self.config.eta, correct_target=self.config.correct_target,
            )
            for hook in hooks:
                latents = hook(i, latents)
        return latents
