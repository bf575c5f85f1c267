"""Deterministic DDIM: inversion, null-text inversion and the dual-branch loop of the SD-1.x
methods (Prompt-to-Prompt, MasaCtrl, Free-Prompt-Editing).

With ``a`` = alphas_cumprod, one DDIM step (eta 0) from a latent ``x`` at level ``a_t`` with the
noise prediction ``eps`` to level ``a_next`` is::

    x0     = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
    x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps

Denoising steps to a less noisy level, inversion to a noisier one; with the same ``eps`` one
undoes the other. Timesteps follow diffusers' ``DDIMScheduler`` with ``steps_offset=1`` and
"leading" spacing (Prompt-to-Prompt's and MasaCtrl's scheduler): for ``N`` steps of ``T``
training timesteps, ``t_i = (N - 1 - i) (T // N) + 1`` in denoising order. The level below the
last step (the clean end) has ``a = alphas_cumprod[0]`` (``set_alpha_to_one=False``).

Inversion (P2P's ``ddim_loop``) runs the UNet at guidance 1 on the current latent and steps up.
Null-text inversion (Mokady et al., P2P's ``null_optimization``) then optimises one unconditional
embedding per denoising step so that the *guided* step lands on the inversion's next latent.
The dual-branch loop runs both branches from the inverted noise; it knows nothing of the
attention controls the method installs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..attention.state import EditState
from ..validation import check_flag, check_number
from .base import BranchLatents, LatentHook

__all__ = [
    "DDIMInversion",
    "DDIMInversionConfig",
    "DDIMSamplerConfig",
    "DualBranchDDIMSampler",
    "Inversion",
    "NullTextConfig",
    "NullTextInversion",
    "UNetEps",
    "ddim_level_alphas",
    "ddim_step",
    "ddim_timesteps",
    "ddim_x0",
]

# (x [B, C, h, w], timestep, embeddings [B, T, D]) -> eps [B, C, h, w]: the plain UNet
UNetEps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _alpha(alpha, like: torch.Tensor) -> torch.Tensor:
    """``alpha`` (a float or 0-d tensor) as a float tensor on ``like``'s device; kept in float32
    or wider so ``1 - a`` near the clean end keeps its digits with fp16 latents."""
    alpha = torch.as_tensor(alpha, device=like.device)
    return alpha if alpha.dtype in (torch.float32, torch.float64) else alpha.float()


def _x0(x: torch.Tensor, eps: torch.Tensor, alpha_t) -> torch.Tensor:
    a_t = _alpha(alpha_t, x)
    return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_x0(x: torch.Tensor, eps: torch.Tensor, alpha_t) -> torch.Tensor:
    """The clean latent DDIM predicts: ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)``; pure.

    Args:
        x: latent at level ``a_t``, ``[B, C, h, w]``.
        eps: noise prediction for ``x``, same shape.
        alpha_t: alphas_cumprod of ``x``'s timestep (float or 0-d tensor).
    """
    return _x0(x, eps, alpha_t).to(x.dtype)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_t, alpha_next) -> torch.Tensor:
    """One deterministic DDIM step from level ``a_t`` to level ``a_next``; pure::

        x0     = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
        x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps

    Denoising when ``a_next > a_t`` (the previous, less noisy timestep), inversion when
    ``a_next < a_t`` (the next, noisier one).

    Args:
        x: latent ``[B, C, h, w]`` at level ``a_t``.
        eps: noise prediction for ``x``, same shape.
        alpha_t, alpha_next: alphas_cumprod of the two levels (floats or 0-d tensors).

    Returns:
        ``x_next`` ``[B, C, h, w]``, in ``x``'s dtype.
    """
    a_next = _alpha(alpha_next, x)
    x0 = _x0(x, eps, alpha_t)
    return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(x.dtype)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> torch.Tensor:
    """DDIM timesteps in denoising order, ``[num_steps]`` long: ``t_i = (N - 1 - i) (T // N) +
    steps_offset``, as diffusers' ``DDIMScheduler(steps_offset=1, timestep_spacing="leading")``
    gives (P2P, MasaCtrl). ``num_train_timesteps`` is ``T`` of the scheduler's config."""
    check_number("num_steps", num_steps, 1, integer=True)
    step_ratio = num_train_timesteps // num_steps
    first = (num_steps - 1) * step_ratio + steps_offset
    if step_ratio < 1 or first >= num_train_timesteps:
        raise ValueError(
            f"{num_steps} DDIM steps do not fit {num_train_timesteps} training timesteps with offset "
            f"{steps_offset} (the first timestep would be {first}); use at most {num_train_timesteps - 1} steps"
        )
    return torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * step_ratio + steps_offset


def ddim_level_alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """alphas_cumprod of every latent level of an inversion, in inversion order, ``[N + 1]``.

    Level ``k >= 1`` is the latent at ``timesteps[N - k]``. Level 0 is the clean end: the
    timestep one step ratio (``T // N``) below the last, or ``alphas_cumprod[0]`` (P2P's
    ``final_alpha_cumprod``) where that is negative. Denoising step ``i`` goes from level
    ``N - i`` to level ``N - 1 - i``; inversion walks the levels upwards.

    Args:
        alphas_cumprod: ``[T]`` of the pipeline's scheduler (any scheduler with the same betas).
        timesteps: ``[N]`` in denoising order (:func:`ddim_timesteps`).
        num_train_timesteps: ``T``.
    """
    alphas_cumprod = alphas_cumprod.float()
    clean_t = int(timesteps[-1]) - num_train_timesteps // len(timesteps)
    clean = alphas_cumprod[clean_t] if clean_t >= 0 else alphas_cumprod[0]
    noisy = alphas_cumprod[timesteps.flip(0).to(alphas_cumprod.device)]
    return torch.cat([clean[None], noisy])


@dataclass(frozen=True)
class Inversion:
    """A DDIM inversion of one clean latent (optionally with null-text embeddings).

    Levels are in inversion order: ``latents[0]`` is the clean latent ``x0``, ``latents[k]``
    (``k >= 1``) the latent at ``timesteps[N - k]``, ``latents[N]`` the noise ``x_T`` both
    branches start from. Denoising step ``i`` (``t = timesteps[i]``) takes level ``N - i`` to
    level ``N - 1 - i``, so :meth:`at_step` ``(i)`` is ``latents[N - 1 - i]`` and
    ``at_step(N - 1)`` is ``x0``.

    Attributes:
        latents: ``N + 1`` latents ``[1, C, h, w]``, clean first.
        timesteps: ``[N]`` long, denoising order.
        alphas: ``[N + 1]`` float32, alphas_cumprod of each level (:func:`ddim_level_alphas`).
        null_embeddings: ``N`` unconditional embeddings ``[1, T, D]``, one per denoising step
            (null-text inversion), or ``None``.
        stats: UNet passes spent: ``{"forward": n, "backward": m}`` (``forward`` counts every
            batch-1 UNet call, with or without gradient; ``backward`` the passes back to the
            null embedding). Empty for an inversion loaded from a cache.
        source_embeddings: ``N`` conditional embeddings ``[1, T, D]`` of the source row, one
            per denoising step (DPL's learned tokens), or ``None`` (the plan's row embedding).
    """

    latents: tuple[torch.Tensor, ...]
    timesteps: torch.Tensor
    alphas: torch.Tensor
    null_embeddings: tuple[torch.Tensor, ...] | None = None
    stats: dict = field(default_factory=dict)
    source_embeddings: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self):
        n = len(self.timesteps)
        if len(self.latents) != n + 1 or len(self.alphas) != n + 1:
            raise ValueError(
                f"an inversion of {n} steps needs {n + 1} latents and level alphas, "
                f"got {len(self.latents)} and {len(self.alphas)}"
            )
        if self.null_embeddings is not None and len(self.null_embeddings) != n:
            raise ValueError(f"an inversion of {n} steps needs {n} null embeddings, got {len(self.null_embeddings)}")
        if self.source_embeddings is not None and len(self.source_embeddings) != n:
            raise ValueError(
                f"an inversion of {n} steps needs {n} source embeddings, got {len(self.source_embeddings)}"
            )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def at_step(self, i: int) -> torch.Tensor:
        """The latent the denoising loop should hold *after* step ``i``: ``latents[N - 1 - i]``."""
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step {i} is outside 0..{self.num_steps - 1}")
        return self.latents[self.num_steps - 1 - i]

    def step_alphas(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, a_prev)`` of denoising step ``i``: the levels ``N - i`` and ``N - 1 - i``."""
        return self.alphas[self.num_steps - i], self.alphas[self.num_steps - 1 - i]


@dataclass(frozen=True)
class DDIMInversionConfig:
    """Settings of the DDIM inversion.

    Attributes:
        num_steps: DDIM steps (P2P, MasaCtrl, FPE: 50); the edit must use the same.
    """

    num_steps: int = 50

    def __post_init__(self):
        check_number("num_steps", self.num_steps, 1, integer=True)


class DDIMInversion:
    """Deterministic DDIM inversion at guidance 1 (P2P's ``ddim_loop``): for ``i`` in
    ``0..N-1``, with ``t = timesteps[N - 1 - i]``, ``eps = unet(x, t, cond)`` and
    ``x <- ddim_step(x, eps, a(level i), a(level i + 1))``."""

    def __init__(self, scheduler, config: DDIMInversionConfig = DDIMInversionConfig()):
        self.scheduler = scheduler
        self.config = config

    def timesteps(self, device=None) -> torch.Tensor:
        return ddim_timesteps(self.config.num_steps, self.scheduler.config.num_train_timesteps).to(device)

    @torch.no_grad()
    def invert(
        self, x0: torch.Tensor, unet_eps: UNetEps, cond_embedding: torch.Tensor, progress: bool = True
    ) -> Inversion:
        """Inverts the clean latent ``x0`` ``[1, C, h, w]``.

        Args:
            x0: clean source latent.
            unet_eps: ``(x [B, C, h, w], t, embeddings [B, T, D]) -> eps [B, C, h, w]``.
            cond_embedding: ``[1, T, D]``, the prompt inverted with (P2P: the source prompt).
        """
        timesteps = self.timesteps(x0.device)
        alphas = ddim_level_alphas(self.scheduler.alphas_cumprod, timesteps, self.scheduler.config.num_train_timesteps)
        alphas = alphas.to(x0.device)
        n = len(timesteps)
        latents = [x0]
        x = x0
        for i in tqdm(range(n), desc="inverting", disable=not progress, leave=False):
            eps = unet_eps(x, timesteps[n - 1 - i], cond_embedding)
            x = ddim_step(x, eps, alphas[i], alphas[i + 1])
            latents.append(x)
        return Inversion(tuple(latents), timesteps, alphas, stats={"forward": n, "backward": 0})


@dataclass(frozen=True)
class NullTextConfig:
    """Settings of null-text inversion (P2P's ``null_optimization`` defaults).

    Attributes:
        guidance_scale: the guidance the edit runs with; the guided step is what is fitted.
        inner_steps: Adam iterations per denoising step, at most.
        lr: Adam's learning rate at step 0; step ``i`` uses ``lr (1 - i / lr_decay_steps)``.
        early_stop_epsilon: stop a step's iterations once the loss is below
            ``early_stop_epsilon + i * early_stop_growth``.
        early_stop_growth: growth of that threshold per step.
        lr_decay_steps: steps over which the learning rate falls to 0 (P2P: 100, for 50 steps);
            an inversion may have at most this many steps.
    """

    guidance_scale: float = 7.5
    inner_steps: int = 10
    lr: float = 1e-2
    early_stop_epsilon: float = 1e-5
    early_stop_growth: float = 2e-5
    lr_decay_steps: int = 100

    def __post_init__(self):
        check_number("guidance_scale", self.guidance_scale)
        check_number("inner_steps", self.inner_steps, 0, integer=True)
        check_number("lr", self.lr, 0)
        check_number("early_stop_epsilon", self.early_stop_epsilon, 0)
        check_number("early_stop_growth", self.early_stop_growth, 0)
        check_number("lr_decay_steps", self.lr_decay_steps, 1, integer=True)


class NullTextInversion:
    """Null-text inversion (Mokady et al. 2023), as google/prompt-to-prompt's
    ``null_optimization``. From ``x = inversion.latents[-1]`` (the noise), for each denoising
    step ``i`` (``t = timesteps[i]``, levels ``a_t`` -> ``a_prev``), starting from the previous
    step's optimised embedding ``u`` (step 0: the given one)::

        e_c  = unet(x, t, cond)                                  # once, no gradient
        at most inner_steps times, Adam on u with lr (1 - i / lr_decay_steps):
            e_u  = unet(x, t, u);   e = e_u + g (e_c - e_u)
            loss = mse(ddim_step(x, e, a_t, a_prev), inversion.at_step(i))
            step; stop once loss < early_stop_epsilon + i early_stop_growth
        null_embeddings[i] = u
        x <- ddim_step(x, e_u + g (e_c - e_u), a_t, a_prev)      # e_u with the optimised u

    Gradients reach only ``u`` (``torch.autograd.grad``): the UNet's parameters, their ``.grad``
    and the module's modes are left as they are.
    """

    def __init__(self, config: NullTextConfig = NullTextConfig()):
        self.config = config

    def learning_rate(self, i: int) -> float:
        """Adam's learning rate at denoising step ``i``: ``lr (1 - i / lr_decay_steps)``."""
        return self.config.lr * (1 - i / self.config.lr_decay_steps)

    def check_steps(self, n: int) -> None:
        """Raises ``ValueError`` when an inversion of ``n`` steps would reach a learning rate of 0."""
        if n > self.config.lr_decay_steps:
            raise ValueError(
                f"null-text inversion of {n} steps: the learning rate lr (1 - i / {self.config.lr_decay_steps}) "
                f"would reach 0; set NullTextConfig.lr_decay_steps >= {n}"
            )

    @torch.no_grad()
    def step(
        self,
        inversion: Inversion,
        i: int,
        x: torch.Tensor,
        unet_eps: UNetEps,
        cond_embedding: torch.Tensor,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Denoising step ``i`` of null-text inversion from ``x`` ``[1, C, h, w]`` (the latent the
        guided loop holds before step ``i``), starting from the embedding ``null`` ``[1, T, D]``.

        Returns ``(u, x_next, passes)``: the optimised embedding (float32, detached), the
        guided step's result with it, and ``{"forward": .., "backward": ..}`` UNet passes spent.
        ``cond_embedding`` may change from step to step (DPL's learned tokens).
        """
        cfg = self.config
        g = cfg.guidance_scale
        dtype = cond_embedding.dtype
        t = inversion.timesteps[i]
        a_t, a_prev = inversion.step_alphas(i)
        target = inversion.at_step(i).float()
        eps_c = unet_eps(x, t, cond_embedding)
        forward, backward = 1, 0
        null = null.detach().float().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=self.learning_rate(i))
        with torch.enable_grad():
            for _ in range(cfg.inner_steps):
                eps_u = unet_eps(x, t, null.to(dtype))
                eps = eps_u + g * (eps_c - eps_u)
                loss = F.mse_loss(ddim_step(x, eps, a_t, a_prev).float(), target)
                null.grad = torch.autograd.grad(loss, [null])[0]
                forward, backward = forward + 1, backward + 1
                optimizer.step()
                if loss.item() < cfg.early_stop_epsilon + i * cfg.early_stop_growth:
                    break
        null = null.detach()
        eps_u = unet_eps(x, t, null.to(dtype))
        forward += 1
        x = ddim_step(x, eps_u + g * (eps_c - eps_u), a_t, a_prev)
        return null, x, {"forward": forward, "backward": backward}

    @torch.no_grad()
    def optimize(
        self,
        inversion: Inversion,
        unet_eps: UNetEps,
        cond_embedding: torch.Tensor,
        uncond_embedding: torch.Tensor,
        progress: bool = True,
    ) -> Inversion:
        """The inversion with ``null_embeddings`` filled and its ``stats`` increased.

        Args:
            inversion: a DDIM inversion (:meth:`DDIMInversion.invert`).
            unet_eps: ``(x [B, C, h, w], t, embeddings [B, T, D]) -> eps``; must let gradients
                flow to ``embeddings`` when they are enabled.
            cond_embedding: ``[1, T, D]``, the conditional embedding of the guided step.
            uncond_embedding: ``[1, T, D]``, the starting unconditional embedding (of "").
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("null-text inversion needs gradients: run it outside torch.inference_mode()")
        n = inversion.num_steps
        self.check_steps(n)
        null = uncond_embedding.detach().float()  # Adam's state in float32, also for fp16 UNets
        nulls = []
        forward = backward = 0
        x = inversion.latents[-1]
        for i in tqdm(range(n), desc="null-text inversion", disable=not progress, leave=False):
            null, x, passes = self.step(inversion, i, x, unet_eps, cond_embedding, null)
            nulls.append(null.to(uncond_embedding.dtype))
            forward, backward = forward + passes["forward"], backward + passes["backward"]
        stats = {
            "forward": inversion.stats.get("forward", 0) + forward,
            "backward": inversion.stats.get("backward", 0) + backward,
        }
        return dataclasses.replace(inversion, null_embeddings=tuple(nulls), stats=stats)


@dataclass(frozen=True)
class DDIMSamplerConfig:
    """Settings of the dual-branch DDIM loop.

    Attributes:
        num_steps: DDIM steps; the inversion must have as many.
        feed_source: replace the source latent after every step ``i`` by the inversion's
            ``at_step(i)`` (MasaCtrl / FPE's ``ref_intermediate_latents``), so the source branch
            follows the inversion exactly.
    """

    num_steps: int = 50
    feed_source: bool = False

    def __post_init__(self):
        check_number("num_steps", self.num_steps, 1, integer=True)
        check_flag("feed_source", self.feed_source)


class DualBranchDDIMSampler:
    """Runs both branches with deterministic DDIM from an inversion's noise.

    Step ``i`` (``t = timesteps[i]``, levels ``a_t`` -> ``a_prev``)::

        e_s, e_t = predict_noise(x_s, x_t, t, i)         (state.step = i, state.alpha_t = a_t)
        x_s     <- ddim_step(x_s, e_s, a_t, a_prev)     (or inversion.at_step(i): feed_source)
        x_t     <- ddim_step(x_t, e_t, a_t, a_prev)

    The step index lets the noise predictor take null-text inversion's embedding of the step.
    ``source_x0``/``target_x0`` are each branch's ``ddim_x0`` at the step; after the last step
    they are the final latents themselves (what P2P decodes).
    """

    def __init__(self, scheduler, config: DDIMSamplerConfig = DDIMSamplerConfig()):
        self.scheduler = scheduler
        self.config = config

    @torch.no_grad()
    def sample(
        self,
        inversion: Inversion,
        predict_noise,
        state: EditState,
        hooks: list[LatentHook] | tuple[LatentHook, ...] = (),
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> BranchLatents:
        """Edits from ``inversion.latents[-1]`` ``[1, C, h, w]``; returns the final latents.

        ``predict_noise(x_s, x_t, t, step)`` gives the guided noise of both branches; ``hooks``
        run after every step and the loop goes on from what they return. ``generator`` is
        unused (DDIM with eta 0 draws no noise); it is taken for the sampler protocol.
        """
        n = inversion.num_steps
        if n != self.config.num_steps:
            raise ValueError(
                f"the inversion has {n} steps but the sampler runs {self.config.num_steps}; "
                "invert with the sampler's num_steps"
            )
        x_T = inversion.latents[-1]
        alphas = ddim_level_alphas(
            self.scheduler.alphas_cumprod, inversion.timesteps, self.scheduler.config.num_train_timesteps
        ).to(x_T.device)
        latents = BranchLatents(source=x_T, target=x_T, source_x0=inversion.latents[0], target_x0=inversion.latents[0])
        state.num_steps = n
        for i, t in enumerate(tqdm(inversion.timesteps, desc="editing", disable=not progress, leave=False)):
            state.step = i
            a_t, a_prev = alphas[n - i], alphas[n - 1 - i]
            state.alpha_t = float(a_t)
            state.alpha_t = float(a_t)
            e_s, e_t = predict_noise(latents.source, latents.target, t, i)
            x_s = inversion.at_step(i) if self.config.feed_source else ddim_step(latents.source, e_s, a_t, a_prev)
            x_t = ddim_step(latents.target, e_t, a_t, a_prev)
            if i == n - 1:
                latents = BranchLatents(source=x_s, target=x_t, source_x0=x_s, target_x0=x_t)
            else:
                latents = BranchLatents(
                    source=x_s,
                    target=x_t,
                    source_x0=ddim_x0(latents.source, e_s, a_t),
                    target_x0=ddim_x0(latents.target, e_t, a_t),
                )
            for hook in hooks:
                latents = hook(i, latents)
        return latents
