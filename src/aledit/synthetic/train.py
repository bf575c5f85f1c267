"""Training the tiny text-to-image model of the synthetic world (``synthetic-tiny``).

Two stages, both on scenes drawn on the fly by :func:`aledit.synthetic.random_scene` (64x64):

1. **Autoencoder** (``AutoencoderKL``, ``vae_scale_factor`` 2: two 32-channel levels, no
   attention) with weights *set*, not learned (:func:`block_average_init`): it encodes each 2x2
   pixel block to its mean RGB and decodes by nearest-neighbour upsampling. At 64x64 every
   texture cell is a 2x2 block aligned with the latent grid, so this is exact for every pixel
   except in blocks an object boundary cuts (about 5% of a scene's pixels move by more than 24
   levels in a round trip). Brief reconstruction training reached 16% such pixels after 600
   steps and fine-tuning from the exact weights was unstable, so none is done. Its
   ``scaling_factor`` is ``latent_scale / std`` of the latents (``latent_scale`` 1 in ``v1``).
2. **Text encoder + UNet**, jointly from scratch: a 2-layer ``CLIPTextModel`` over CLIP's real
   49,408-token vocabulary (CLIP's BPE tokenizer, BOS/EOS, padded with EOS to 77 tokens, causal
   attention, last hidden state after the final layer norm, as Stable Diffusion uses it) and a
   ``UNet2DConditionModel`` on the 32x32 latents with cross-attention at the 16x16 and 8x8 levels
   (7 layers; the middle block works at 8x8). Epsilon prediction, DDPM with Stable Diffusion's ``scaled_linear`` betas
   (1,000 steps), uniform timesteps, min-SNR-5 loss weighting, AdamW with warmup and cosine
   decay, gradient clipping, an exponential moving average of the weights (what is saved).

Captions follow the phrase scheme of the edits (:mod:`aledit.synthetic.scenes`), so that edit
prompts are in distribution (:func:`training_caption`): the mentioned objects in drawing order
joined with " and "; each object is left out with probability ``object_dropout`` and otherwise
named with one of the phrase forms ``"{color}-colored {shape} made of {material}"``,
``"{color}-colored {shape}"``, ``"{shape} made of {material}"`` or ``"{shape}"``; the whole
caption is empty with probability ``caption_dropout`` (classifier-free guidance).

Issue 15 options (all off in the default recipe ``v1``, which stays the packaged model's):
``caption_order="random"`` names the objects in a random order; ``token_grounding_weight`` and
``pixel_grounding_weight`` add the grounding losses of :mod:`aledit.synthetic.grounding`
(TokenCompose-style auxiliary signals from the world's exact masks) on every cross-attention
layer; ``train(..., init=FOLDER)`` continues from a saved model (a second recipe stage) and
``checkpoint_every`` saves the averaged weights along the way. :data:`RECIPES` names the
recipes.

Initial weights, scenes, captions, noise and timesteps are drawn from generators seeded by
``TrainConfig.seed``; the same config on the same torch build gives the same weights. The
result is saved with ``ALEEditPipeline.save_pretrained`` (diffusers layout, ``model_index.json``)
with the UNet and text encoder weights stored as float16 (they load as float32, their configs
say so) to keep the package small.

Run ``python scripts/train_synthetic.py --out DIR`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..commands import SEED_MAX
from ..io import check_output_dir
from ..prompts import join_phrases
from ..validation import check_number
from .grounding import (
    CrossAttentionRecorder,
    pixel_grounding_loss,
    region_masks_at,
    separation_grounding_loss,
    token_grounding_loss,
)
from .model import is_saved_pipeline
from .scenes import SceneObject, random_scene

__all__ = [
    "CAPTION_ORDERS",
    "PHRASE_FORMS",
    "RECIPES",
    "TrainConfig",
    "block_average_init",
    "build_components",
    "caption_tokens",
    "grounding_targets",
    "load_components",
    "main",
    "prepare_autoencoder",
    "save_pipeline",
    "scene_batch",
    "train",
    "train_diffusion",
    "training_caption",
    "training_caption_phrases",
]

logger = logging.getLogger(__name__)

CAPTION_ORDERS: tuple[str, ...] = ("drawing", "random")

# Phrase forms an object may take in a training caption (the first is the scene caption's).
PHRASE_FORMS: tuple[str, ...] = (
    "{color}-colored {shape} made of {material}",
    "{color}-colored {shape}",
    "{shape} made of {material}",
    "{shape}",
)


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and training settings of ``synthetic-tiny``.

    Attributes:
        seed: seeds every draw (scenes, captions, noise, timesteps, initial weights).
        image_size: side of the training scenes in pixels.
        n_objects_weights: relative frequency of scenes with 1, 2, 3 objects.
        vae_channels: ``block_out_channels`` of the autoencoder (2 levels: scale factor 2).
        latent_channels: channels of the latent (0-2 hold the block mean RGB, the rest 0).
        latent_scale: the autoencoder's ``scaling_factor`` is ``latent_scale / std`` of the
            latents. Below 1 it lowers the signal-to-noise ratio of every timestep by
            ``latent_scale^2`` (a noise-schedule shift): a flat synthetic scene shows its
            colours through much more noise than a natural image does, so with 1 the model
            decides every attribute from the noisy latent early and ignores the caption after
            (t <= 600); a lower scale keeps attributes undecided, and the text in charge, longer.
        text_hidden_size, text_layers, text_heads, text_intermediate_size: the CLIP text encoder.
        max_length: tokenizer length (CLIP's 77).
        unet_channels: ``block_out_channels`` of the UNet; the first level has no attention.
        unet_heads: attention heads per transformer block (diffusers' ``attention_head_dim``).
        steps, batch_size, lr, warmup_steps, min_lr_ratio: diffusion training (AdamW, linear
            warmup, cosine decay to ``min_lr_ratio * lr``).
        weight_decay, grad_clip: AdamW weight decay and gradient-norm clipping.
        ema_decay: decay of the weight average that is saved (warmed up as ``(1+n)/(10+n)``).
        min_snr_gamma: min-SNR loss weighting ``min(SNR, gamma) / SNR`` (0 disables it).
        caption_dropout: probability of the empty caption (classifier-free guidance).
        object_dropout: probability of leaving one object out of a caption.
        phrase_form_weights: relative frequency of each of :data:`PHRASE_FORMS`.
        caption_order: ``"drawing"`` (objects named back to front, as scene captions are) or
            ``"random"`` (a random order per caption).
        token_grounding_weight, pixel_grounding_weight, separation_grounding_weight: weights of
            the token-level, pixel-level and separation grounding losses
            (:mod:`aledit.synthetic.grounding`) added to the denoising loss, averaged over every
            cross-attention layer; 0 leaves them out.
        grounding_max_timestep: grounding losses count only for samples noised to
            ``t < grounding_max_timestep`` (1000: all).
        threads: ``torch.set_num_threads`` during training.
    """

    seed: int = 0
    image_size: int = 64
    n_objects_weights: tuple[float, float, float] = (1.0, 2.0, 2.0)
    # autoencoder
    vae_channels: tuple[int, ...] = (32, 32)
    latent_channels: int = 4
    latent_scale: float = 1.0
    # text encoder
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    max_length: int = 77
    # unet
    unet_channels: tuple[int, ...] = (32, 64, 96)
    unet_heads: int = 4
    # diffusion training
    steps: int = 2400
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    object_dropout: float = 0.15
    phrase_form_weights: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2)
    caption_order: str = "drawing"
    token_grounding_weight: float = 0.0
    pixel_grounding_weight: float = 0.0
    separation_grounding_weight: float = 0.0
    grounding_max_timestep: int = 1000
    threads: int = 2

    def __post_init__(self):
        # every number a flag can set is checked here, before anything is built or trained
        check_number("seed", self.seed, 0, None, integer=True)
        if self.seed > SEED_MAX:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        check_number("image_size", self.image_size, 16, None, integer=True)
        for name in ("steps", "batch_size", "threads", "latent_channels", "text_hidden_size", "text_layers",
                     "text_heads", "text_intermediate_size", "max_length", "unet_heads"):
            check_number(name, getattr(self, name), 1, None, integer=True)
        check_number("warmup_steps", self.warmup_steps, 0, None, integer=True)
        for name in ("lr", "grad_clip"):
            check_number(name, getattr(self, name), 0.0, None)
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0, got 0")
        check_number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        for name in ("weight_decay", "min_snr_gamma", "token_grounding_weight", "pixel_grounding_weight",
                     "separation_grounding_weight"):
            check_number(name, getattr(self, name), 0.0, None)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.ema_decay == 1:
            raise ValueError("ema_decay must be below 1 (at 1 the saved average never moves), got 1")
        check_number("grounding_max_timestep", self.grounding_max_timestep, 1, 1000, integer=True)
        for name in ("vae_channels", "unet_channels"):
            channels = tuple(getattr(self, name))
            if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
                raise ValueError(f"{name} must be positive integers, got {channels}")
        if any(c % 8 or c % self.unet_heads for c in self.unet_channels):
            # GroupNorm's 8 groups and the attention heads split every level's channels
            raise ValueError(
                f"unet_channels must be multiples of 8 and of unet_heads ({self.unet_heads}), got {tuple(self.unet_channels)}"
            )
        if len(self.n_objects_weights) != 3 or min(self.n_objects_weights) < 0 or sum(self.n_objects_weights) <= 0:
            raise ValueError(f"n_objects_weights must be 3 non-negative weights, got {self.n_objects_weights}")
        if len(self.phrase_form_weights) != len(PHRASE_FORMS) or sum(self.phrase_form_weights) <= 0:
            raise ValueError(f"phrase_form_weights needs {len(PHRASE_FORMS)} weights, got {self.phrase_form_weights}")
        for name in ("caption_dropout", "object_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order must be one of {', '.join(CAPTION_ORDERS)}, got {self.caption_order!r}")
        if not (math.isfinite(self.latent_scale) and 0 < self.latent_scale <= 10):
            raise ValueError(f"latent_scale must be in (0, 10], got {self.latent_scale}")
        object.__setattr__(self, "vae_channels", tuple(self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(self.unet_channels))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def grounded(self) -> bool:
        return max(self.token_grounding_weight, self.pixel_grounding_weight, self.separation_grounding_weight) > 0


# ---------------------------------------------------------------------------------------------
# Components


def build_components(config: TrainConfig = TrainConfig()) -> dict:
    """Untrained components in the layout :class:`~aledit.pipeline.ALEEditPipeline` takes:
    ``vae``, ``text_encoder``, ``tokenizer`` (CLIP's real one), ``unet``, ``scheduler`` (an
    ``LCMScheduler`` with Stable Diffusion's betas; training uses the same betas)."""
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tokenizer import clip_tokenizer

    torch.manual_seed(config.seed)
    n_vae = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=8,
        sample_size=config.image_size,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_intermediate_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_length,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    n_unet = len(config.unet_channels)
    attention = (False,) + (True,) * (n_unet - 1)
    unet = UNet2DConditionModel(
        sample_size=config.image_size // config.vae_scale_factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_heads,  # diffusers' name for the number of heads
        norm_num_groups=8,
    )
    scheduler = LCMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(config.max_length),
        "unet": unet,
        "scheduler": scheduler,
    }


# ---------------------------------------------------------------------------------------------
# Data


def training_caption(objects: tuple[SceneObject, ...], rng: np.random.Generator, config: TrainConfig) -> str:
    """A caption of ``objects`` in the edits' phrase scheme (see the module docstring).

    At least one object is named unless the whole caption is dropped (empty string).
    """
    return training_caption_phrases(objects, rng, config)[0]


def training_caption_phrases(
    objects: tuple[SceneObject, ...], rng: np.random.Generator, config: TrainConfig
) -> tuple[str, tuple[tuple[int, str], ...]]:
    """:func:`training_caption` and, in caption order, ``(object index, phrase)`` of every
    object it names. With ``caption_order="drawing"`` the draws from ``rng`` are exactly those
    of the original recipe (the default recipe stays reproducible)."""
    if rng.random() < config.caption_dropout:
        return "", ()
    keep = rng.random(len(objects)) >= config.object_dropout
    if not keep.any():
        keep[rng.integers(len(objects))] = True
    weights = np.asarray(config.phrase_form_weights, dtype=np.float64)
    forms = rng.choice(len(PHRASE_FORMS), size=len(objects), p=weights / weights.sum())
    named = [
        (i, PHRASE_FORMS[f].format(color=o.color, shape=o.shape, material=o.material))
        for i, (o, k, f) in enumerate(zip(objects, keep, forms))
        if k
    ]
    if config.caption_order == "random" and len(named) > 1:
        named = [named[j] for j in rng.permutation(len(named))]
    return join_phrases([p for _, p in named]), tuple(named)


def scene_batch(rng: np.random.Generator, batch_size: int, config: TrainConfig) -> tuple[torch.Tensor, list]:
    """``batch_size`` random scenes: images ``[B, 3, H, W]`` in ``[-1, 1]`` and their objects."""
    pixels, scenes = _scene_batch(rng, batch_size, config)
    return pixels, [s.objects for s in scenes]


def _scene_batch(rng: np.random.Generator, batch_size: int, config: TrainConfig) -> tuple[torch.Tensor, list]:
    weights = np.asarray(config.n_objects_weights, dtype=np.float64)
    counts = rng.choice(3, size=batch_size, p=weights / weights.sum()) + 1
    scenes = [random_scene(rng, int(n), config.image_size) for n in counts]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, scenes


MAX_OBJECTS = 3


def grounding_targets(
    tokenizer, scenes: list, named: list[tuple[tuple[int, str], ...]], captions: list[str], sides: tuple[int, ...], cache: dict
) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """What the grounding losses compare the attention with, for one batch.

    Args:
        tokenizer: the CLIP tokenizer.
        scenes: the batch's scenes (masks ``bool [H, W]`` per object).
        named: per sample, ``(object index, phrase)`` of the objects its caption names.
        captions: the captions.
        sides: the attention layers' sides (e.g. ``(16, 8, 4)``).
        cache: caption -> token spans, filled as captions are seen.

    Returns:
        ``token_masks [B, K, T]``, ``{side: region_masks [B, K, side^2]}``, ``valid [B, K]``
        with ``K = 3`` slots, slot ``k`` the ``k``-th named object.
    """
    from ..prompts import layout_prompt

    batch, length = len(scenes), tokenizer.model_max_length
    token_masks = torch.zeros(batch, MAX_OBJECTS, length)
    valid = torch.zeros(batch, MAX_OBJECTS, dtype=torch.bool)
    height, width = scenes[0].image.shape[:2]
    pixel_masks = np.zeros((batch, MAX_OBJECTS, height, width), dtype=bool)
    for b, (scene, objects, caption) in enumerate(zip(scenes, named, captions)):
        if not objects:
            continue
        if caption not in cache:
            cache[caption] = layout_prompt(tokenizer, caption, [p for _, p in objects]).spans
        for k, ((index, _), (start, stop)) in enumerate(zip(objects, cache[caption])):
            token_masks[b, k, start:stop] = 1.0
            pixel_masks[b, k] = scene.masks[index]
            valid[b, k] = bool(scene.masks[index].any())
    regions = {side: region_masks_at(pixel_masks, side) for side in sides}
    return token_masks, regions, valid


def caption_tokens(tokenizer, captions: list[str]) -> torch.Tensor:
    """``[B, max_length]`` token ids, padded with EOS as CLIP does."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# ---------------------------------------------------------------------------------------------
# Stage 1: autoencoder


def _cosine_lr(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


_CONSTANT = 100.0  # the constant channel pair that makes GroupNorm statistics image-independent


@torch.no_grad()
def block_average_init(vae) -> None:
    """Sets ``vae``'s weights so that it encodes each 2x2 pixel block to its mean RGB (latent
    channels 0-2; the others 0) and decodes by nearest-neighbour upsampling, exactly up to
    float32 rounding; every texture of the world is then reconstructed exactly and only
    object-boundary blocks are averaged (what fine-tuning improves).

    How: every residual block's last convolution is zero (the block is the identity); in each
    GroupNorm group of 4 channels the first layer writes ``(x, -x, K, -K)`` with ``K = 100``, so
    the group mean is 0 and its variance ``(K^2 + E[x^2]) / 2`` is nearly image-independent; the
    normalised ``x`` is scaled back by ``K / sqrt(2)`` and ``silu(x) - silu(-x) = x`` undoes the
    activation. Needs 2 levels of equal width ``8 * 4 = 32`` channels with 8 groups.
    """
    channels = tuple(vae.config.block_out_channels)
    latent = vae.config.latent_channels
    if len(channels) != 2 or channels[0] != channels[1] or channels[0] != 32 or vae.config.norm_num_groups != 8:
        raise ValueError(f"block_average_init needs block_out_channels (32, 32) with 8 groups, got {channels}")
    if latent < 3 or 4 * latent > channels[0]:
        raise ValueError(f"block_average_init needs 3 <= latent_channels <= 8, got {latent}")
    k = _CONSTANT
    for module in vae.modules():
        if module.__class__.__name__ == "ResnetBlock2D":
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()

    def split(conv, n_inputs: int) -> None:  # input channel c -> (x, -x) in group c; (K, -K) in every group
        conv.weight.zero_()
        conv.bias.zero_()
        centre = conv.weight.shape[-1] // 2
        for c in range(n_inputs):
            conv.weight[4 * c, c, centre, centre] = 1.0
            conv.weight[4 * c + 1, c, centre, centre] = -1.0
        for g in range(conv.out_channels // 4):
            conv.bias[4 * g + 2] = k
            conv.bias[4 * g + 3] = -k

    def identity(conv, taps) -> None:
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.out_channels):
            for y, x in taps:
                conv.weight[c, c, y, x] = 1.0 / len(taps)

    def merge(norm, conv, n_outputs: int) -> None:  # group c -> silu(x) - silu(-x) = x
        norm.weight.zero_()
        norm.bias.zero_()
        conv.weight.zero_()
        conv.bias.zero_()
        centre = conv.weight.shape[-1] // 2
        for c in range(n_outputs):
            norm.weight[4 * c] = norm.weight[4 * c + 1] = k / math.sqrt(2.0)
            conv.weight[c, 4 * c, centre, centre] = 1.0
            conv.weight[c, 4 * c + 1, centre, centre] = -1.0

    enc, dec = vae.encoder, vae.decoder
    split(enc.conv_in, 3)
    identity(enc.down_blocks[0].downsamplers[0].conv, [(0, 0), (0, 1), (1, 0), (1, 1)])  # 2x2 block mean
    merge(enc.conv_norm_out, enc.conv_out, 3)
    enc.conv_out.bias[latent:] = -10.0  # log-variance: a near-deterministic posterior
    identity(vae.quant_conv, [(0, 0)])
    identity(vae.post_quant_conv, [(0, 0)])
    split(dec.conv_in, latent)
    identity(dec.up_blocks[0].upsamplers[0].conv, [(1, 1)])
    merge(dec.conv_norm_out, dec.conv_out, 3)


def prepare_autoencoder(vae, config: TrainConfig, rng: np.random.Generator) -> dict:
    """Makes ``vae`` the exact block-average autoencoder (:func:`block_average_init`) and sets
    its ``scaling_factor`` to ``config.latent_scale / std`` of the latents of 128 random scenes. Returns stats,
    among them the share of pixels a round trip moves by more than 24 levels (object-boundary
    blocks: the floor of every edit's ``te_changed``)."""
    block_average_init(vae)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        pixels, _ = scene_batch(rng, 128, config)
        latents = vae.encode(pixels).latent_dist.mode()
        recon = vae.decode(latents).sample.clamp(-1, 1)
    error = ((recon - pixels).abs() * 127.5).amax(dim=1)  # [B, H, W], 0-255 units
    std = float(latents.std())
    vae.register_to_config(scaling_factor=config.latent_scale / std)
    stats = {
        "latent_std": std,
        "latent_mean": float(latents.mean()),
        "pixels_off_by_more_than_24": float((error > 24).float().mean()),
    }
    logger.info("autoencoder: %s", stats)
    return stats


# ---------------------------------------------------------------------------------------------
# Stage 2: text encoder + UNet


class _EMA:
    """Exponential moving average of parameters, warmed up as ``min(decay, (1+n)/(10+n))``."""

    def __init__(self, modules, decay: float):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the parameters and the average (twice restores them)."""
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def train_diffusion(
    components: dict,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: bool = True,
    checkpoint_every: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict:
    """Trains ``text_encoder`` and ``unet`` of ``components`` jointly (frozen ``vae``); the
    averaged (EMA) weights are copied into the modules at the end. Returns stats.

    With ``checkpoint_every > 0`` the averaged weights are also saved every that many steps to
    ``checkpoint_dir/step-N`` (a loadable pipeline each), for curves of a figure against
    training time."""
    from diffusers import DDPMScheduler

    vae, text_encoder, unet, tokenizer = (components[k] for k in ("vae", "text_encoder", "unet", "tokenizer"))
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    generator = torch.Generator().manual_seed(config.seed + 1)
    scale = vae.config.scaling_factor
    vae.eval().requires_grad_(False)
    text_encoder.train()
    unet.train()
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema = _EMA([text_encoder, unet], config.ema_decay)
    token_cache: dict[str, torch.Tensor] = {}
    span_cache: dict[str, tuple] = {}
    recorder = CrossAttentionRecorder() if config.grounded else None
    if recorder is not None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        from ..attention.install import is_cross_attention

        unet.set_attn_processor(
            {name: recorder if is_cross_attention(name) else AttnProcessor2_0() for name in unet.attn_processors}
        )
    losses, grounding_log = [], {"token": [], "pixel": [], "separation": []}
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="diffusion", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = config.lr * _cosine_lr(step, config.steps, config.warmup_steps, config.min_lr_ratio)
        pixels, scenes = _scene_batch(rng, config.batch_size, config)
        drawn = [training_caption_phrases(s.objects, rng, config) for s in scenes]
        captions = [c for c, _ in drawn]
        missing = [c for c in set(captions) if c not in token_cache]
        if missing:
            for caption, ids in zip(missing, caption_tokens(tokenizer, missing)):
                token_cache[caption] = ids
        ids = torch.stack([token_cache[c] for c in captions])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * scale
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(ids)[0]
        if recorder is not None:
            recorder.maps.clear()
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if config.min_snr_gamma > 0:
            per_sample = per_sample * (snr[t].clamp(max=config.min_snr_gamma) / snr[t])
        loss = denoising = per_sample.mean()
        if recorder is not None:
            sides = tuple(sorted({int(round(m.shape[1] ** 0.5)) for m in recorder.maps}))
            token_masks, regions, valid = grounding_targets(
                tokenizer, scenes, [n for _, n in drawn], captions, sides, span_cache
            )
            valid = valid & (t < config.grounding_max_timestep)[:, None]
            terms = {}
            for name, fn in (("token", token_grounding_loss), ("pixel", pixel_grounding_loss), ("separation", separation_grounding_loss)):
                terms[name] = torch.stack(
                    [fn(m, token_masks, regions[int(round(m.shape[1] ** 0.5))], valid) for m in recorder.maps]
                ).mean()
                grounding_log[name].append(terms[name].item())
            recorder.maps.clear()
            loss = (
                loss
                + config.token_grounding_weight * terms["token"]
                + config.pixel_grounding_weight * terms["pixel"]
                + config.separation_grounding_weight * terms["separation"]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        ema.update()
        losses.append(denoising.item())
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            _save_checkpoint(components, ema, os.path.join(checkpoint_dir, f"step-{step + 1}"), time.perf_counter() - start)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 100 == 0 or step == config.steps - 1:
            logger.info(
                "step %d/%d loss %.4f%s (%.0f s)",
                step,
                config.steps,
                np.mean(losses[-100:]),
                "".join(f" {k} {np.mean(v[-100:]):.3f}" for k, v in grounding_log.items() if v),
                time.perf_counter() - start,
            )
    if recorder is not None:
        unet.set_attn_processor(AttnProcessor2_0())
    ema.copy_to_params()
    text_encoder.eval()
    unet.eval()
    curve = [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)]
    stats = {"final_loss": float(np.mean(losses[-100:])), "loss_per_100_steps": curve, "captions_seen": len(token_cache)}
    for k, v in grounding_log.items():
        if v:
            stats[f"{k}_grounding_per_100_steps"] = [float(np.mean(v[i : i + 100])) for i in range(0, len(v), 100)]
    return stats


# ---------------------------------------------------------------------------------------------
# Saving


def save_pipeline(components: dict, folder: str | os.PathLike, half: tuple[str, ...] = ("unet", "text_encoder")) -> None:
    """Saves the components with ``ALEEditPipeline.save_pretrained`` (safetensors) and rewrites
    the weights of the ``half`` components as float16; they load as float32 (configs unchanged)."""
    from safetensors.torch import load_file, save_file

    from ..pipeline import ALEEditPipeline

    pipe = ALEEditPipeline(**components)
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in half:
        directory = os.path.join(folder, name)
        for filename in os.listdir(directory):
            if filename.endswith(".safetensors"):
                path = os.path.join(directory, filename)
                state = load_file(path)
                save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path, {"format": "pt"})
    for root, _, files in os.walk(folder):  # safetensors writes 0600; package data must be readable
        for filename in files:
            os.chmod(os.path.join(root, filename), 0o644)


def _save_checkpoint(components: dict, ema: _EMA, folder: str, seconds: float) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = components["unet"]
    processors = unet.attn_processors
    unet.set_attn_processor(AttnProcessor2_0())
    ema.swap()
    try:
        save_pipeline(components, folder)
    finally:
        ema.swap()
        unet.set_attn_processor(processors)
    with open(os.path.join(folder, "checkpoint.json"), "w") as f:
        json.dump({"seconds": round(seconds, 1)}, f)
    logger.info("checkpoint %s (%.0f s)", folder, seconds)


def load_components(folder: str | os.PathLike) -> dict:
    """The components of a saved pipeline (``vae``, ``text_encoder``, ``unet`` as float32, the
    tokenizer and scheduler rebuilt as :func:`build_components` makes them), to continue
    training from (``train(..., init=folder)``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = os.fspath(folder)
    if not is_saved_pipeline(folder):
        raise FileNotFoundError(f"{folder} is not a saved pipeline (no model_index.json); train one first")
    components = build_components(TrainConfig())
    components["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae").float()
    components["text_encoder"] = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").float()
    components["unet"] = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").float()
    return components


def _parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    progress: bool = True,
    init: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
) -> dict:
    """Runs both stages and saves the pipeline to ``out``; returns the training record that is
    also written to ``out/training.json``.

    With ``init`` (a saved pipeline's folder) the autoencoder, text encoder and UNet start from
    that pipeline (its architecture, not ``config``'s) and only stage 2 runs: a second stage of
    a recipe. With ``checkpoint_every`` the averaged weights are saved every that many steps
    to ``out/checkpoints/step-N``."""
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    if init is not None:
        components = load_components(init)
        vae_stats = {"loaded_from": os.fspath(init)}
    else:
        components = build_components(config)
        vae_stats = prepare_autoencoder(components["vae"], config, rng)
    vae_seconds = time.perf_counter() - start
    diffusion_stats = train_diffusion(
        components, config, rng, progress, checkpoint_every, os.path.join(out, "checkpoints")
    )
    total_seconds = time.perf_counter() - start
    os.makedirs(out, exist_ok=True)
    save_pipeline(components, out)
    record = {
        "config": dataclasses.asdict(config),
        "init": None if init is None else os.fspath(init),
        "parameters": {k: _parameter_count(components[k]) for k in ("vae", "text_encoder", "unet")},
        "seconds": {"autoencoder": round(vae_seconds, 1), "total": round(total_seconds, 1)},
        "autoencoder": vae_stats,
        "diffusion": diffusion_stats,
        "torch": torch.__version__,
    }
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
    logger.info("saved to %s after %.1f min", out, total_seconds / 60)
    return record


RECIPES: dict[str, TrainConfig] = {
    # the packaged model up to issue 15 (43 min on 2 cores)
    "v1": TrainConfig(),
    # v1 plus captions in random order and both grounding terms (issue 15)
    "grounded": TrainConfig(caption_order="random", token_grounding_weight=0.05, pixel_grounding_weight=0.05),
    # the issue-15 candidate whose words localise (docs/synthetic_v2_progress.md, fourth session):
    # token and pixel terms at 0.01 from scratch, random order, the noise schedule shifted
    # (latent scale 0.5) so that the caption still decides colour at t = 400-600
    "localised": TrainConfig(
        caption_order="random", latent_scale=0.5, token_grounding_weight=0.01, pixel_grounding_weight=0.01
    ),
}
"""Named training recipes; ``--recipe NAME`` starts from one, and flags override its fields."""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="train_synthetic", description="Train the synthetic-tiny text-to-image model on the synthetic world."
    )
    parser.add_argument("--out", required=True, help="output folder (diffusers layout)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="v1", help="named recipe (default: v1)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int, help="diffusion training steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--unet-channels", help="UNet block channels, e.g. 32,64,96")
    parser.add_argument("--latent-scale", type=float, help="scaling_factor = this / latent std (< 1: lower SNR)")
    parser.add_argument("--caption-order", choices=CAPTION_ORDERS)
    parser.add_argument("--token-grounding", type=float, help="weight of the token-level grounding loss")
    parser.add_argument("--pixel-grounding", type=float, help="weight of the pixel-level grounding loss")
    parser.add_argument("--separation-grounding", type=float, help="weight of the separation grounding loss")
    parser.add_argument("--grounding-max-t", type=int, help="grounding losses only for timesteps below this")
    parser.add_argument("--init", help="continue from this saved pipeline (a second training stage)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save the averaged weights every N steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    return parser


_FLAGS = {
    "seed": "seed",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup_steps": "warmup_steps",
    "ema_decay": "ema_decay",
    "threads": "threads",
    "caption_order": "caption_order",
    "latent_scale": "latent_scale",
    "token_grounding": "token_grounding_weight",
    "pixel_grounding": "pixel_grounding_weight",
    "separation_grounding": "separation_grounding_weight",
    "grounding_max_t": "grounding_max_timestep",
}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe named by ``args.recipe`` with the fields given as flags replaced."""
    changes = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    if args.unet_channels is not None:
        try:
            changes["unet_channels"] = tuple(int(c) for c in args.unet_channels.split(","))
        except ValueError:
            raise ValueError(f"--unet-channels must be comma-separated integers, got {args.unet_channels!r}") from None
    return dataclasses.replace(RECIPES[args.recipe], **changes)


def main(argv: list[str] | None = None) -> int:
    """``python scripts/train_synthetic.py --out DIR [--recipe NAME] [--steps N] ...``; returns an exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as e:
        build_parser().error(str(e))
    try:
        check_output_dir(args.out)
    except OSError as e:
        build_parser().error(str(e))
    if args.init is not None and not is_saved_pipeline(args.init):
        build_parser().error(f"--init {args.init} is not a saved pipeline (no model_index.json)")
    if args.checkpoint_every < 0:
        build_parser().error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    logger.info("training with %s", config)
    train(config, args.out, progress=not args.no_progress, init=args.init, checkpoint_every=args.checkpoint_every)
    return 0
