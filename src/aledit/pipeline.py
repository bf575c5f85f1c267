"""The user-facing pipeline: ``ALEEditPipeline.from_pretrained(...)`` then ``pipe.edit(...)``.

``edit`` reads top to bottom: check inputs, resolve settings, prepare masks, let the method
plan (embeddings, processors, hooks), encode the image, run the sampler with the processors
installed, decode, resize back to the input's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .attention.install import attention_processors
from .attention.state import SOURCE, TARGET, BatchLayout, EditState
from .edits import Edit, EditError, EditType, parse_edit, self_replace_for
from .masks.ops import MaskError, ObjectMasks
from .masks.provider import MaskProvider
from .methods.ale import ALEConfig, ALEMethod
from .methods.base import EditPlan, guidance_scale_embedding
from .samplers.base import BranchLatents
from .samplers.virtual_inversion import VirtualInversionConfig, VirtualInversionSampler

__all__ = ["ALEEditPipeline", "ALEConfig", "EditOutput", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SimianLuo/LCM_Dreamshaper_v7"


@dataclass(frozen=True)
class EditOutput:
    """Result of :meth:`ALEEditPipeline.edit`.

    Attributes:
        image: the edited image, at the input image's size.
        source_prompt, target_prompt: the base prompts used.
        edit_types: the (inferred or given) type of each edit.
        self_replace: the self-attention schedule used.
        masks: ``[N, h, w]`` bool object masks at latent resolution.
        object_masks: ``[N, H, W]`` bool dilated object masks at the working resolution.
        background: ``[h, w]`` bool, the region BB keeps from the source (latent resolution).
        latents: the final latents of both branches (``target_x0`` is what was decoded).
        attention_maps: ``[N, h', w']`` target cross-attention per object in [0, 1], when asked.
    """

    image: Image.Image
    source_prompt: str
    target_prompt: str
    edit_types: tuple[EditType, ...]
    self_replace: float
    masks: torch.Tensor
    background: torch.Tensor
    object_masks: torch.Tensor
    latents: BranchLatents
    attention_maps: torch.Tensor | None = None


class _Observer:
    """Latent hook that shows the latents to a user callback and changes nothing."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, step: int, latents: BranchLatents) -> BranchLatents:
        self.callback(step, latents)
        return latents


def _as_edits(edits) -> tuple[Edit, ...]:
    if isinstance(edits, (Edit, str)):
        edits = [edits]
    out = tuple(parse_edit(e) if isinstance(e, str) else e for e in edits)
    if not out:
        raise EditError("no edits given: pass at least one edit such as 'wolf -> pink-colored wolf'")
    for e in out:
        if not isinstance(e, Edit):
            raise EditError(f"an edit must be an Edit or a 'SOURCE -> TARGET' string, got {type(e).__name__}")
    seen = set()
    for e in out:
        key = e.source.lower()
        if key in seen:
            raise EditError(f"object {e.source!r} is edited twice; give each source object once")
        seen.add(key)
    return out


def _working_size(size, multiple: int) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else tuple(size)
    for side in (width, height):
        if not isinstance(side, int) or side <= 0 or side % multiple:
            raise ValueError(f"size must be a positive multiple of {multiple}, got {size!r}")
    return width, height


class ALEEditPipeline(DiffusionPipeline):
    """ALE-Edit on a Stable-Diffusion-style latent diffusion model with an LCM scheduler.

    Components follow the standard diffusers layout, so ``from_pretrained`` takes a hub id or a
    local folder (default: ``SimianLuo/LCM_Dreamshaper_v7``, the paper's model).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler):
        super().__init__()
        if not isinstance(scheduler, LCMScheduler):
            scheduler = LCMScheduler.from_config(scheduler.config)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike = DEFAULT_MODEL, **kwargs):
        """Loads from a hub id or local folder; ``"tiny-random"`` builds the offline random preset,
        ``"synthetic-tiny"`` loads the packaged model trained on :mod:`aledit.synthetic` scenes."""
        from .presets import TINY_RANDOM, tiny_random_components

        if str(pretrained_model_name_or_path) == TINY_RANDOM:
            return cls(**tiny_random_components())
        from .synthetic.model import SYNTHETIC_TINY, synthetic_model_path

        if str(pretrained_model_name_or_path) == SYNTHETIC_TINY:
            pretrained_model_name_or_path = synthetic_model_path()
        # Components of the folder that __init__ does not take (an SD checkpoint's safety_checker,
        # feature_extractor) are skipped by diffusers, so no kwargs are needed for them.
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # -- the edit ---------------------------------------------------------------------------

    @torch.no_grad()
    def edit(
        self,
        image: Image.Image | str | os.PathLike,
        edits: Sequence[Edit | str] | Edit | str,
        masks: dict | MaskProvider | None = None,
        *,
        seed: int = 0,
        steps: int = 15,
        size: int | tuple[int, int] = 768,
        config: ALEConfig | None = None,
        source_prompt: str | None = None,
        return_attention: bool = False,
        callback_on_step_end: Callable[[int, BranchLatents], None] | None = None,
        progress: bool = True,
    ) -> EditOutput:
        """Edits the objects named in ``edits`` and nothing else.

        Args:
            image: source image (PIL or path).
            edits: ``Edit`` objects or ``"source -> target"`` strings, one per object.
            masks: ``{source phrase: mask}`` (paths, PIL images, arrays of any size) or a
                :class:`~aledit.masks.MaskProvider`.
            seed: seed of the shared noise.
            steps: denoising steps (paper: 15).
            size: working resolution, an int (square) or ``(width, height)``, multiples of 8
                (paper: 768); the result is resized back to the input's size.
            config: method settings (:class:`ALEConfig`).
            source_prompt: optional fuller description of the source image containing every
                source phrase (default: the source phrases joined with " and ").
            return_attention: also return averaged target cross-attention maps per object.
            callback_on_step_end: called as ``f(step, latents)`` after each step, after the
                method's hooks (to inspect, not to change, the latents).
        """
        # 1. check inputs
        config = config or ALEConfig()
        image = self._load_image(image)
        edits = _as_edits(edits)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        width, height = _working_size(size, 8)
        if masks is None:
            raise MaskError("no masks given: pass {source phrase: mask} or a MaskProvider")
        names = [e.source for e in edits]

        # 2. settings
        self_replace = config.self_replace if config.self_replace is not None else self_replace_for(edits)
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        layout = self._layout(config)
        state = EditState(layout=layout, num_steps=steps, latent_hw=latent_hw)

        # 3. masks at the working resolution
        sources = masks(image, names) if isinstance(masks, MaskProvider) else masks
        object_masks = ObjectMasks.from_sources(sources, names, (width, height), config.dilation_ratio)

        # 4. the method's plan: row embeddings, processors, hooks
        record = (max(1, latent_hw[0] // 4), max(1, latent_hw[1] // 4)) if return_attention else None
        plan = ALEMethod(config).plan(
            self.text_encoder,
            self.tokenizer,
            edits,
            object_masks,
            state,
            self_replace,
            record_attention=record,
            source_prompt=source_prompt,
        )

        # 5. source latent
        x0 = self._encode_image(image, width, height)

        # 6. sample with the method's processors installed
        sampler = VirtualInversionSampler(self.scheduler, VirtualInversionConfig(num_steps=steps, eta=config.eta))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        predict = self._noise_predictor(plan, state, config)
        hooks = plan.hooks
        if callback_on_step_end is not None:
            hooks = (*hooks, _Observer(callback_on_step_end))
        with attention_processors(self.unet, plan.choose_processor):
            latents = sampler.sample(x0, predict, state, hooks, generator=generator, progress=progress)

        # 7. decode and resize back
        edited = self._decode(latents.target_x0).resize(image.size, Image.BICUBIC)
        latent_masks = object_masks.at(latent_hw)
        return EditOutput(
            image=edited,
            source_prompt=plan.source_prompt,
            target_prompt=plan.target_prompt,
            edit_types=tuple(e.resolved_type for e in edits),
            self_replace=self_replace,
            masks=latent_masks,
            background=~latent_masks.any(dim=0),
            object_masks=object_masks.masks,
            latents=latents,
            attention_maps=plan.recorder.maps() if plan.recorder is not None else None,
        )

    @torch.no_grad()
    def reconstruct(
        self,
        image: Image.Image | str | os.PathLike,
        prompt: str,
        processors: Callable[[EditState], Callable[[str, object], object]],
        *,
        seed: int = 0,
        steps: int = 15,
        size: int | tuple[int, int] = 768,
        progress: bool = True,
    ) -> BranchLatents:
        """Runs the source branch alone (one UNet row per step, guidance 1) on ``image`` with
        ``prompt``, with the processors ``processors(state)`` chooses installed; for watching the
        model's attention on an image (e.g. attention-derived masks)."""
        image = self._load_image(image)
        width, height = _working_size(size, 8)
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        state = EditState(layout=BatchLayout.source_only(), num_steps=steps, latent_hw=latent_hw)
        from .ore import encode_prompts

        embeds = encode_prompts(self.text_encoder, self.tokenizer, [prompt])
        plan = EditPlan(row_embeddings=embeds, choose_processor=processors(state))
        x0 = self._encode_image(image, width, height)
        sampler = VirtualInversionSampler(self.scheduler, VirtualInversionConfig(num_steps=steps))
        predict = self._noise_predictor(plan, state, ALEConfig(source_guidance=1.0, target_guidance=1.0))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with attention_processors(self.unet, plan.choose_processor):
            return sampler.sample(x0, predict, state, (), generator=generator, progress=progress)

    # -- steps of edit ----------------------------------------------------------------------

    @staticmethod
    def _load_image(image) -> Image.Image:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image or a path, got {type(image).__name__}")
        return image.convert("RGB")

    def _layout(self, config: ALEConfig) -> BatchLayout:
        if config.guidance == "embedded":
            if self.unet.config.time_cond_proj_dim is None:
                raise ValueError("guidance='embedded' needs a guidance-distilled UNet (time_cond_proj_dim set)")
            return BatchLayout.dual_branch(source_uncond=False, target_uncond=False)
        return BatchLayout.dual_branch(
            source_uncond=config.source_guidance != 1.0, target_uncond=config.target_guidance != 1.0
        )

    @torch.no_grad()
    def _encode_image(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(self._execution_device, self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode()
        return (latent * self.vae.config.scaling_factor).to(self.unet.dtype)

    @torch.no_grad()
    def _decode(self, latent: torch.Tensor) -> Image.Image:
        pixels = self.vae.decode(latent.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return self.image_processor.postprocess(pixels, output_type="pil")[0]

    def _noise_predictor(self, plan: EditPlan, state: EditState, config: ALEConfig):
        """The UNet call of one step: both branches in one batch, then guidance per branch."""
        layout = state.layout
        embeds = plan.row_embeddings.to(self._execution_device, self.unet.dtype)
        scales = {SOURCE: config.source_guidance, TARGET: config.target_guidance}
        timestep_cond = None
        if config.guidance == "embedded":
            w = torch.tensor([scales[row.branch] - 1.0 for row in layout.rows])
            timestep_cond = guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(self._execution_device, self.unet.dtype)

        def predict(x_s: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
            batch = torch.cat([x_s if row.branch == SOURCE else x_t for row in layout.rows])
            noise = self.unet(batch, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond).sample
            guided = {}
            for branch in (SOURCE, TARGET):
                if layout.index(branch, True) is None:  # a source-only batch: target = source
                    guided[branch] = guided[SOURCE]
                    continue
                cond = noise[layout.index(branch, True)][None]
                uncond_row = layout.index(branch, False)
                if uncond_row is None:
                    guided[branch] = cond
                else:
                    uncond = noise[uncond_row][None]
                    guided[branch] = uncond + scales[branch] * (cond - uncond)
            return guided[SOURCE], guided[TARGET]

        return predict
