"""The user-facing pipeline: ``EditPipeline.from_pretrained(...)`` then ``pipe.edit(..., method=...)``.

The pipeline is method-agnostic. ``edit`` reads top to bottom: check inputs, resolve the method
(:mod:`aledit.methods.registry`), prepare masks, let the method plan (row embeddings, attention
processors, latent hooks), encode the image, let the method's sampler prepare (e.g. DDIM and
null-text inversion, with the UNet's own processors), run the sampler with the method's
processors installed, decode, resize back to the input's size. It never reads a method's config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .attention.install import attention_processors, self_attention_order
from .attention.state import SOURCE, TARGET, BatchLayout, EditState
from .edits import Edit, EditError, EditType, parse_edit
from .masks.ops import MaskError, ObjectMasks
from .masks.provider import MaskProvider
from .methods.ale import ALEConfig
from .methods.base import MASKS_REQUIRED, MASKS_UNUSED, EditPlan, Guidance, MethodContext, guidance_scale_embedding
from .methods.registry import MethodError, make_method, method_info
from .samplers.base import BranchLatents, UNetCall
from .samplers.virtual_inversion import VirtualInversionConfig, VirtualInversionSampler

__all__ = ["EditPipeline", "ALEEditPipeline", "ALEConfig", "EditOutput", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SimianLuo/LCM_Dreamshaper_v7"


@dataclass(frozen=True)
class EditOutput:
    """Result of :meth:`EditPipeline.edit`.

    Attributes:
        image: the edited image, at the input image's size.
        method: registry name of the method that made it.
        source_prompt, target_prompt: the base prompts used.
        edit_types: the (inferred or given) type of each edit.
        self_replace: the self-attention schedule used (``None`` where a method has none).
        masks: ``[N, h, w]`` bool object masks at latent resolution (``None`` without masks).
        object_masks: ``[N, H, W]`` bool dilated object masks at the working resolution.
        background: ``[h, w]`` bool, the region outside every object mask (latent resolution).
        latents: the final latents of both branches (``target_x0`` is what was decoded).
        attention_maps: ``[N, h', w']`` target cross-attention per object in [0, 1], when asked.
        extras: method-specific results (e.g. the masks a local blend derived) and
            ``inversion_stats``: UNet passes the sampler's preparation made (DDIM / null-text
            inversion: ``{"forward": n, "backward": m}``; empty for virtual inversion).
    """

    image: Image.Image
    source_prompt: str
    target_prompt: str
    edit_types: tuple[EditType, ...]
    self_replace: float | None
    masks: torch.Tensor | None
    background: torch.Tensor | None
    object_masks: torch.Tensor | None
    latents: BranchLatents
    attention_maps: torch.Tensor | None = None
    method: str = "ale"
    extras: dict = field(default_factory=dict)


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


class EditPipeline(DiffusionPipeline):
    """Every registered editing method on a Stable-Diffusion-style latent diffusion model.

    Components follow the standard diffusers layout, so ``from_pretrained`` takes a hub id or a
    local folder: an LCM checkpoint (``SimianLuo/LCM_Dreamshaper_v7``, ALE's and InfEdit's) or an
    SD-1.x checkpoint (P2P's, MasaCtrl's, FPE's). The scheduler is rebuilt as an
    ``LCMScheduler`` from the checkpoint's config (same noise schedule); DDIM methods read only
    its ``alphas_cumprod``.
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
            pipe = cls(**tiny_random_components())
            pipe.register_to_config(_name_or_path=TINY_RANDOM)
            return pipe
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
        method="ale",
        config=None,
        options: Mapping | None = None,
        seed: int = 0,
        steps: int | None = None,
        size: int | tuple[int, int] | None = None,
        source_prompt: str | None = None,
        return_attention: bool = False,
        inversion_cache=None,
        callback_on_step_end: Callable[[int, BranchLatents], None] | None = None,
        progress: bool = True,
    ) -> EditOutput:
        """Edits the objects named in ``edits`` and nothing else.

        Args:
            image: source image (PIL or path).
            edits: ``Edit`` objects or ``"source -> target"`` strings, one per object.
            masks: ``{source phrase: mask}`` (paths, PIL images, arrays of any size) or a
                :class:`~aledit.masks.MaskProvider`. Required by ALE; optional for methods that
                derive regions from attention (their local blend then uses the given masks);
                see ``aledit methods``.
            method: a registry name (``"ale"``, ``"p2p"``, ``"masactrl"``, ``"fpe"``,
                ``"infedit"``, ...) or a method object.
            config: the method's config dataclass (e.g. :class:`ALEConfig`), or
            options: ``{field: value}`` changes to the method's default config.
            seed: seed of the noise (virtual inversion) and of anything random.
            steps: denoising steps (default: the method's paper, e.g. ALE 15, P2P 50).
            size: working resolution, an int (square) or ``(width, height)``, multiples of 8
                (default: the method's paper, ALE 768, SD-1.x methods 512); the result is
                resized back to the input's size.
            source_prompt: optional fuller description of the source image containing every
                source phrase (default: the source phrases joined with " and ").
            return_attention: also return averaged target cross-attention maps per object.
            inversion_cache: a folder (or :class:`~aledit.samplers.InversionCache`) where DDIM /
                null-text inversions are kept, so several methods on one image invert once.
            callback_on_step_end: called as ``f(step, latents)`` after each step, after the
                method's hooks (to inspect, not to change, the latents).
        """
        # 1. check inputs
        method = make_method(method, config, **dict(options or {}))
        info = _registered_info(method)
        image = self._load_image(image)
        edits = _as_edits(edits)
        steps = steps if steps is not None else (info.default_steps if info else 15)
        size = size if size is not None else (info.default_size if info else 768)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        width, height = _working_size(size, 8)
        if masks is None and method.masks == MASKS_REQUIRED:
            raise MaskError(
                f"method {method.name!r} needs a mask per object: pass {{source phrase: mask}} or a MaskProvider"
            )
        if masks is not None and method.masks == MASKS_UNUSED:
            logger.warning("method %r does not use masks; the given masks are ignored", method.name)
            masks = None
        names = [e.source for e in edits]

        # 2. settings
        guidance = method.guidance
        if guidance.embedded and self.unet.config.time_cond_proj_dim is None:
            raise ValueError("embedded guidance needs a guidance-distilled UNet (time_cond_proj_dim set)")
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        state = EditState(layout=guidance.layout(), num_steps=steps, latent_hw=latent_hw)

        # 3. masks at the working resolution
        object_masks = None
        if masks is not None:
            sources = masks(image, names) if isinstance(masks, MaskProvider) else masks
            object_masks = ObjectMasks.from_sources(sources, names, (width, height), method.dilation_ratio)

        # 4. the method's plan: row embeddings, processors, hooks
        record = (max(1, latent_hw[0] // 4), max(1, latent_hw[1] // 4)) if return_attention else None
        ctx = MethodContext(
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            edits=edits,
            masks=object_masks,
            state=state,
            source_prompt=source_prompt,
            record_attention=record,
            attention_layers=self_attention_order(self.unet.attn_processors),
        )
        plan = method.plan(ctx)

        # 5. source latent (the posterior's mode, or a sample drawn first from the call's
        # generator when the plan asks), and what the sampler prepares with the UNet's own processors
        generator = torch.Generator(device="cpu").manual_seed(seed)
        x0 = self._encode_image(image, width, height, generator if plan.source_latent == "sample" else None)
        sampler = method.sampler(self.scheduler, steps)
        if plan.guides and not getattr(sampler, "supports_guides", False):
            raise ValueError(
                f"method {method.name!r} plans latent guides but its sampler {type(sampler).__name__} does not run them"
            )
        unet_call = UNetCall(self.unet, self._unet_eps)
        prepared = sampler.prepare(x0, unet_call, plan, progress=progress, cache=inversion_cache)

        # 6. sample with the method's processors installed
        predict = self._noise_predictor(
            plan,
            state,
            guidance,
            getattr(prepared, "null_embeddings", None),
            getattr(prepared, "source_embeddings", None),
        )
        hooks = plan.hooks
        if callback_on_step_end is not None:
            hooks = (*hooks, _Observer(callback_on_step_end))
        guides = {"guides": plan.guides} if plan.guides else {}  # samplers without guides keep their signature
        with attention_processors(self.unet, plan.choose_processor):
            latents = sampler.sample(prepared, predict, state, hooks, generator=generator, progress=progress, **guides)

        # 7. decode and resize back
        edited = self._decode(latents.target_x0).resize(image.size, Image.BICUBIC)
        latent_masks = object_masks.at(latent_hw) if object_masks is not None else None
        return EditOutput(
            image=edited,
            method=method.name,
            source_prompt=plan.source_prompt,
            target_prompt=plan.target_prompt,
            edit_types=tuple(e.resolved_type for e in edits),
            self_replace=plan.self_replace,
            masks=latent_masks,
            background=~latent_masks.any(dim=0) if latent_masks is not None else None,
            object_masks=object_masks.masks if object_masks is not None else None,
            latents=latents,
            attention_maps=plan.recorder.maps() if plan.recorder is not None else None,
            extras={**plan.extras, "inversion_stats": dict(getattr(prepared, "stats", None) or {})},
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
        predict = self._noise_predictor(plan, state, Guidance(source=1.0, target=1.0))
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

    @torch.no_grad()
    def _encode_image(
        self, image: Image.Image, width: int, height: int, sample_generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled source latent ``[1, C, h, w]``: the VAE posterior's mode, or a sample drawn with
        ``sample_generator`` when one is given."""
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(self._execution_device, self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        latent = posterior.mode() if sample_generator is None else posterior.sample(sample_generator)
        return (latent * self.vae.config.scaling_factor).to(self.unet.dtype)

    @torch.no_grad()
    def _decode(self, latent: torch.Tensor) -> Image.Image:
        pixels = self.vae.decode(latent.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return self.image_processor.postprocess(pixels, output_type="pil")[0]

    def _unet_eps(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Plain UNet noise prediction ``[B, C, h, w]`` for ``embeddings [B, T, D]`` (what
        inversions run on; gradients flow when the caller enables them)."""
        embeddings = embeddings.to(self._execution_device, self.unet.dtype)
        return self.unet(x, t, encoder_hidden_states=embeddings).sample

    def _noise_predictor(
        self, plan: EditPlan, state: EditState, guidance: Guidance, null_embeddings=None, source_embeddings=None
    ):
        """The UNet call of one step: both branches in one batch, then guidance per branch.

        ``null_embeddings`` (null-text inversion) replace the unconditional rows' embedding at
        each step, ``source_embeddings`` (DPL's learned tokens) the source's conditional row,
        when the sampler passes the step index.
        """
        layout = state.layout
        embeds = plan.row_embeddings.to(self._execution_device, self.unet.dtype)
        uncond_rows = [i for i, row in enumerate(layout.rows) if not row.conditional]
        source_row = layout.index(SOURCE, True)
        scales = {SOURCE: guidance.source, TARGET: guidance.target}
        timestep_cond = None
        if guidance.embedded:
            w = torch.tensor([scales[row.branch] - 1.0 for row in layout.rows])
            timestep_cond = guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(self._execution_device, self.unet.dtype)

        def predict(x_s: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, step: int | None = None):
            rows = embeds
            if null_embeddings is not None and step is not None and uncond_rows:
                rows = embeds.clone()
                rows[uncond_rows] = null_embeddings[step].to(rows.device, rows.dtype).reshape(rows.shape[1:])
            if source_embeddings is not None and step is not None:
                rows = rows.clone() if rows is embeds else rows
                rows[source_row] = source_embeddings[step].to(rows.device, rows.dtype).reshape(rows.shape[1:])
            batch = torch.cat([x_s if row.branch == SOURCE else x_t for row in layout.rows])
            noise = self.unet(batch, t, encoder_hidden_states=rows, timestep_cond=timestep_cond).sample
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


def _registered_info(method):
    """The registry's entry of ``method`` (its default steps and size), or ``None`` for a method
    object that is not registered (it then gets 15 steps at 768, ALE's defaults)."""
    try:
        return method_info(method.name)
    except (MethodError, AttributeError):
        return None


class ALEEditPipeline(EditPipeline):
    """:class:`EditPipeline` whose ``edit`` runs ALE-Edit by default and takes an
    :class:`ALEConfig` as ``config`` (the API before other methods existed; kept working)."""

    @torch.no_grad()
    def edit(self, image, edits, masks=None, *, config: ALEConfig | None = None, method="ale", **kwargs) -> EditOutput:
        return super().edit(image, edits, masks, method=method, config=config, **kwargs)

