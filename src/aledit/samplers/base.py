"""What every dual-branch sampler shares: the latents of both branches and the hook protocol.

A sampler runs the denoising loop of an edit. It asks a *noise predictor* (the pipeline's UNet
call, with the attention processors of the method installed) for the guided noise of both
branches, steps both latents, and passes them through the method's *latent hooks* (background
blending) after each step. A sampler that supports them (``supports_guides = True``) also runs
the method's *latent guides* before each step: a guide may call the noise predictor itself
(e.g. with gradients on, to move the target latent down an attention energy). Samplers never
know which controls are installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

__all__ = ["BranchLatents", "LatentGuide", "LatentHook", "NoisePredictor", "Sampler", "UNetCall"]


@dataclass(frozen=True)
class BranchLatents:
    """Latents of both branches after a step, each ``[1, C, h, w]``.

    Attributes:
        source: source-branch latent ``x_s``.
        target: target-branch latent ``x_t``.
        source_x0: the source branch's estimate of the clean latent.
        target_x0: the target branch's estimate of the clean latent (decoded at the end).
    """

    source: torch.Tensor
    target: torch.Tensor
    source_x0: torch.Tensor
    target_x0: torch.Tensor

    def replace(self, **changes) -> "BranchLatents":
        return replace(self, **changes)


class LatentHook(Protocol):
    """Called after every step with the step index; returns the (possibly changed) latents."""

    def __call__(self, step: int, latents: BranchLatents) -> BranchLatents: ...


class LatentGuide(Protocol):
    """Called before every step with the step index, its timestep, the latents the step starts
    from and the step's noise predictor; returns the (possibly changed) latents the step then
    uses. Guides may run the predictor with gradients enabled (the sampler itself runs without)."""

    def __call__(self, step: int, timestep: torch.Tensor, latents: BranchLatents, predict_noise) -> BranchLatents: ...


class UNetCall:
    """The plain UNet as a sampler's ``prepare`` sees it.

    ``call(x [B, C, h, w], t, embeddings [B, T, D]) -> eps [B, C, h, w]`` runs the UNet
    (gradients flow when the caller enables them); ``call.processors(choose)`` is a context
    that installs ``choose(layer name, current processor)`` on every attention layer and
    restores the previous ones (a sampler that needs to watch attention while it prepares, e.g.
    DPL's maps with their graph); ``call.unet`` is the module (its config, its levels).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        eps: the noise prediction; default ``unet(x, t, encoder_hidden_states=e).sample``.
    """

    def __init__(self, unet, eps: Callable | None = None):
        self.unet = unet
        self._eps = eps

    def __call__(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if self._eps is not None:
            return self._eps(x, t, embeddings)
        return self.unet(x, t, encoder_hidden_states=embeddings.to(x.device, self.unet.dtype)).sample

    def processors(self, choose):
        from ..attention.install import attention_processors

        return attention_processors(self.unet, choose)


# (source latent, target latent, timestep) -> (guided source noise, guided target noise)
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Sampler(Protocol):
    """What the pipeline runs: ``prepare`` once with the UNet's own processors (e.g. a DDIM or
    null-text inversion of ``x0``), then ``sample`` with the method's processors installed.

    ``unet_eps(x [B, C, h, w], t, embeddings [B, T, D]) -> eps`` is the plain UNet; ``plan`` is
    the method's :class:`~aledit.methods.base.EditPlan` (its ``inversion_embedding`` and
    ``uncond_embedding``); ``cache`` an optional inversion cache. ``predict_noise`` may be
    called with a fourth argument, the step index (null-text inversion's per-step embedding).
    """

    def prepare(self, x0: torch.Tensor, unet_eps, plan, *, progress: bool = True, cache=None) -> Any: ...

    def sample(self, prepared: Any, predict_noise, state, hooks=(), generator=None, progress: bool = True) -> BranchLatents: ...
