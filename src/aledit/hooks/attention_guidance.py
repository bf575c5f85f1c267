"""Attention guidance: move the target latent down an energy of its attention maps before a step.

A latent guide (:class:`~aledit.samplers.base.LatentGuide`): while its window is active, each
iteration runs the step's noise predictor once with gradients on (the target latent
``requires_grad``; the source latent, text embeddings and UNet parameters are constants), lets
the installed processors record maps into a :class:`~aledit.attention.binding.BindingMaps`,
evaluates ``energy(cross maps, self maps)`` and takes one normalised gradient step
(:func:`aledit.binding.guided_latent`) on the target latent. Gradients are taken with
``torch.autograd.grad`` with respect to the latent only, so no parameter's ``.grad`` is touched.

Cost per guided iteration: one extra UNet forward of the step's whole batch and one backward
pass; ``stats`` counts them (``{"forward": n, "backward": n}``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..attention.binding import BindingMaps
from ..attention.state import EditState
from ..binding import guided_latent
from ..samplers.base import BranchLatents

__all__ = ["AttentionGuidance"]

logger = logging.getLogger(__name__)


class AttentionGuidance:
    """Gradient guidance of the target latent on an attention energy.

    Args:
        state: the call's shared state (the sampler sets ``alpha_t``).
        maps: the recorder the method's processors fill.
        energy: ``(cross, self_maps) -> scalar tensor``; ``cross`` and ``self_maps`` are the
            recorder's lists of ``(hw, map)``.
        window: a step window (``active(step, num_steps)``).
        step_size: size of the normalised step, in units of the latent's noise level.
        iterations: gradient steps per guided step.
    """

    def __init__(
        self,
        state: EditState,
        maps: BindingMaps,
        energy: Callable[[list, list], torch.Tensor],
        window,
        step_size: float,
        iterations: int = 1,
    ):
        self.state = state
        self.maps = maps
        self.energy = energy
        self.window = window
        self.step_size = step_size
        self.iterations = iterations
        self.stats = {"forward": 0, "backward": 0}
        self.energies: list[tuple[int, float]] = []  # (step, energy before each gradient step)

    def __call__(self, step: int, timestep, latents: BranchLatents, predict_noise) -> BranchLatents:
        if self.step_size == 0 or not self.window.active(step, self.state.num_steps):
            return latents
        noise_level = float((1.0 - self.state.alpha_t) ** 0.5) if self.state.alpha_t is not None else 1.0
        target = latents.target
        for _ in range(self.iterations):
            with torch.enable_grad():
                x = target.detach().requires_grad_(True)
                self.maps.start()
                try:
                    predict_noise(latents.source.detach(), x, timestep)
                finally:
                    cross, self_maps = self.maps.stop()
                self.stats["forward"] += 1
                energy = self.energy(cross, self_maps)
                self.energies.append((step, float(energy.detach())))
                if not energy.requires_grad:
                    logger.debug("attention guidance: no recorded map depends on the latent at step %d", step)
                    return latents.replace(target=target)
                (grad,) = torch.autograd.grad(energy, x)
                self.stats["backward"] += 1
            target = guided_latent(x.detach(), grad, self.step_size, noise_level)
        return latents.replace(target=target)
