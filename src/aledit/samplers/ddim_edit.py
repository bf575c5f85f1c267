"""The sampler of the SD-1.x methods (P2P, MasaCtrl, FPE): invert, optionally null-text
optimise, then run both branches with DDIM from the inverted noise.

``prepare`` runs with the UNet's own processors (no edit controls): a DDIM inversion of the
source latent with the plan's ``inversion_embedding`` (the source prompt, or "" for MasaCtrl's
official setting) at guidance 1, then, if asked, null-text inversion (Mokady et al.) of the plan's
``uncond_embedding`` so the guided source branch lands on the inversion trajectory. Both are
kept in an optional :class:`~aledit.samplers.inversion_cache.InversionCache`, so several methods
on one image invert once. ``sample`` is :class:`~aledit.samplers.ddim.DualBranchDDIMSampler`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import torch

from .ddim import (
    DDIMInversion,
    DDIMInversionConfig,
    DDIMSamplerConfig,
    DualBranchDDIMSampler,
    Inversion,
    NullTextConfig,
    NullTextInversion,
)
from .inversion_cache import InversionCache, tensor_digest

__all__ = ["DDIMEditConfig", "DDIMEditSampler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DDIMEditConfig:
    """Settings of the DDIM edit sampler.

    Attributes:
        num_steps: DDIM steps (P2P, MasaCtrl, FPE: 50).
        null_text: run null-text inversion after the DDIM inversion (P2P's real-image setting).
        null_text_guidance: the guidance scale NTI optimises for (the edit's, 7.5).
        feed_source: replace the source latent after every step by the inversion's
            (MasaCtrl / FPE's ``ref_intermediate_latents``), so the source branch is exact.
    """

    num_steps: int = 50
    null_text: bool = False
    null_text_guidance: float = 7.5
    feed_source: bool = False


class DDIMEditSampler:
    """DDIM inversion (+ null-text inversion) then the dual-branch DDIM loop."""

    def __init__(self, scheduler, config: DDIMEditConfig = DDIMEditConfig()):
        self.scheduler = scheduler
        self.config = config
        self._loop = DualBranchDDIMSampler(
            scheduler, DDIMSamplerConfig(num_steps=config.num_steps, feed_source=config.feed_source)
        )

    def _cache_key(self, cache, x0: torch.Tensor, unet_eps, plan) -> str:
        # The UNet's identity: its output on a fixed small input (two checkpoints sharing the
        # VAE and text encoder, like SD-1.4 and 1.5, still get different keys).
        probe = torch.linspace(-1, 1, 4 * 8 * 8, device=x0.device, dtype=x0.dtype).reshape(1, 4, 8, 8)
        with torch.no_grad():
            unet_id = unet_eps(probe, torch.tensor(500, device=x0.device), plan.inversion_embedding[None])
        parts = {
            "x0": tensor_digest(x0),
            "prompt": tensor_digest(plan.inversion_embedding),
            "unet": tensor_digest(unet_id),
            "alphas": tensor_digest(self.scheduler.alphas_cumprod),
            "steps": self.config.num_steps,
        }
        if self.config.null_text:
            parts.update(uncond=tensor_digest(plan.uncond_embedding), nti=asdict(NullTextConfig(guidance_scale=self.config.null_text_guidance)))
        return cache.key(**parts)

    # what a cache hit is reported as (subclasses that prepare more than an inversion say so)
    cache_label = "inversion"

    def prepare(self, x0: torch.Tensor, unet_eps, plan, *, progress: bool = True, cache=None) -> Inversion:
        """The inversion of ``x0`` ``[1, C, h, w]`` (from ``cache`` when it holds it; else
        :meth:`_invert`, then stored there)."""
        if isinstance(cache, (str, os.PathLike)):
            cache = InversionCache(cache)
        key = self._cache_key(cache, x0, unet_eps, plan) if cache is not None else None
        if key is not None:
            found = cache.load(key)
            if found is not None:
                logger.info("%s found in the cache", self.cache_label)
                return found
        inversion = self._invert(x0, unet_eps, plan, progress)
        if key is not None:
            cache.save(key, inversion)
        return inversion

    def _invert(self, x0: torch.Tensor, unet_eps, plan, progress: bool) -> Inversion:
        """DDIM inversion with the plan's inversion prompt, then null-text inversion if asked."""
        cond = plan.inversion_embedding[None].to(x0.device, x0.dtype)
        inversion = DDIMInversion(self.scheduler, DDIMInversionConfig(num_steps=self.config.num_steps)).invert(
            x0, unet_eps, cond, progress=progress
        )
        if self.config.null_text:
            uncond = plan.uncond_embedding[None].to(x0.device, x0.dtype)
            nti = NullTextInversion(NullTextConfig(guidance_scale=self.config.null_text_guidance))
            inversion = nti.optimize(inversion, unet_eps, cond, uncond, progress=progress)
        return inversion

    def sample(self, prepared: Inversion, predict_noise, state, hooks=(), generator=None, progress: bool = True):
        return self._loop.sample(prepared, predict_noise, state, hooks, generator=generator, progress=progress)

