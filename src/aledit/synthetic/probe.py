"""Does a model's cross-attention localise words on synthetic scenes, and can its captions
re-colour an object? The figures of issue 15 (``scripts/synthetic_attention_probe.py``).

Attention (:func:`attention_figures`): 2-object scenes (:func:`~aledit.synthetic.random_scene`)
are encoded, noised to each of ``timesteps`` with seeded noise and passed once through the UNet
with their own caption. For every cross-attention layer (head-mean probabilities ``[HW, T]``):

* ``bos_mass``, ``word_mass``, ``eos_mass``: the mean attention mass per pixel on BOS, on the
  caption's tokens and on EOS + padding (they sum to 1);
* ``own_mask_ratio``: an object's phrase's word map (the attention its tokens get, normalised to
  sum 1 over pixels) summed inside the object's mask (area-pooled to the layer), divided by the
  mask's share of the image: 1.0 for a uniform map, ``1 / share`` when all attention is inside;
* ``other_mask_ratio``: the same inside the *other* object's mask.

Each figure is the mean over scenes, objects and layers; per timestep in ``by_timestep``. The
headline ``own_mask_ratio`` / ``other_mask_ratio`` are those at t = 500 (issue 15's targets);
the masses are means over all probed timesteps.

Re-colouring (:func:`recolour_success`): 1-object scenes noised to t = 999 (almost pure noise)
are denoised in ``recolour_steps`` deterministic DDIM steps (evenly spaced from 999 to 0) with
classifier-free guidance ``recolour_guidance`` and the object's full phrase with another colour;
``recolour_success`` is the share of the object's mask pixels whose nearest palette tone
(:func:`~aledit.synthetic.classify_pixels`) is the new colour (base or shade), averaged over
scenes. From t = 999 the latent keeps only a trace of the layout (``sqrt(alpha_bar) = 0.07``
times a scaled latent), so the generated object need not land on the source mask;
``recolour_colour_share`` separates colour from placement: of the generated pixels that show
any object colour, anywhere, the share in the new colour.

Caption control (:func:`caption_control`): down to which noise level does the caption decide
an object's colour? 1-object scenes are noised to each of ``control_timesteps`` and the clean
image is predicted in one step (classifier-free guidance ``control_guidance``, the object's
phrase with another colour); the figure per timestep is the share of scenes whose mean predicted
colour inside the object's mask is nearest (base or shade tone) the new colour. A model whose
captions only act at t >= 800 can re-colour from pure noise but not in an edit that starts from
an inverted latent at a lower noise level.

Shape control (:func:`shape_control`): can a caption redraw an object as another *shape* in
place, the object edits of the synthetic benchmark? 1-object scenes are noised to each of
``control_timesteps`` and predicted in one step as above, with the caption naming another shape
(same colour and material); the pixels of the prediction in the object's colour
(:func:`~aledit.synthetic.classify_pixels`) are compared with the new shape's and the source
shape's silhouettes at the object's centre and size. The figure per timestep is the mean of
``IoU(new) - IoU(source)``: positive when the prediction takes the named shape, negative when it
keeps the source's, about 0 when it is neither (a blob at high noise).

Shapes drawn (:func:`shape_drawn`): does the model draw the shape a caption names at all?
Captions of one object (the full phrase; the shapes in turn, random colour and material) are
generated from pure noise with the re-colouring's sampler; :func:`drawn_shape` reads the shape
of the pixels in the named colour (the shape whose silhouette, centred on their bounding box and
sized to it, overlaps them most). ``shape_drawn`` is the share of generations whose drawn shape
is the named one: chance is 1/9, and the reader scores 0.89 on clean rendered scenes (its
ceiling: a bounding box is not quite the silhouette's frame for the asymmetric shapes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..ore import encode_prompts
from ..prompts import layout_prompt
from ..validation import check_number
from ..attention.install import is_cross_attention
from .grounding import CrossAttentionRecorder, region_masks_at
from .metrics import COLOR_NAMES, classify_pixels
from .scenes import COLORS, FULL_TEMPLATE, SHAPES, random_scene, shape_mask

__all__ = ["PROBE_KEYS", "ProbeConfig", "attention_figures", "caption_control", "recolour_figures", "drawn_shape", "recolour_success", "run_probe", "shape_control", "shape_drawn"]

logger = logging.getLogger(__name__)

PROBE_KEYS: tuple[str, ...] = (
    "own_mask_ratio",
    "other_mask_ratio",
    "own_other_ratio",
    "bos_mass",
    "word_mass",
    "eos_mass",
    "recolour_success",
    "recolour_colour_share",
    "shape_drawn",
)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe.

    Attributes:
        scenes: scenes per figure (2-object scenes for attention, 1-object for re-colouring).
        timesteps: noise levels of the attention probe; 500 gives the headline ratios.
        recolour_steps: DDIM steps of the re-colouring (and of :func:`shape_drawn`).
        recolour_guidance: classifier-free guidance of the re-colouring (and of
            :func:`shape_drawn`).
        control_timesteps: noise levels of :func:`caption_control` and :func:`shape_control`.
        control_guidance: classifier-free guidance of both (the synthetic edits' target
            guidance).
        seed: seeds scenes, colours and noise.
    """

    scenes: int = 16
    timesteps: tuple[int, ...] = (800, 500, 200)
    recolour_steps: int = 20
    recolour_guidance: float = 4.0
    control_timesteps: tuple[int, ...] = (900, 800, 700, 600, 500, 400)
    control_guidance: float = 8.0
    seed: int = 1

    def __post_init__(self):
        check_number("scenes", self.scenes, 1, integer=True)
        check_number("recolour_steps", self.recolour_steps, 1, 999, integer=True)
        check_number("recolour_guidance", self.recolour_guidance, 0.0)
        check_number("control_guidance", self.control_guidance, 0.0)
        for field in ("timesteps", "control_timesteps"):
            values = tuple(int(t) for t in getattr(self, field))
            if not values or not all(0 <= t < 1000 for t in values):
                raise ValueError(f"{field} must be in [0, 999], got {values}")
            object.__setattr__(self, field, values)


def _scenes(config: ProbeConfig, desc: str, progress: bool):
    # one bar per figure: a probe of many scenes runs for minutes to hours
    return tqdm(range(config.scenes), desc=desc, disable=not progress, leave=False)


def _latent(pipe, image: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


def _decode(pipe, latent: torch.Tensor) -> torch.Tensor:
    """``float [H, W, 3]`` in [0, 255] of a ``[1, C, h, w]`` scaled latent."""
    image = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    return (image[0].permute(1, 2, 0) + 1) * 127.5


def _recolour_case(pipe, rng: np.random.Generator):
    """A 1-object scene, another colour for its object and the embedding ``[1, L, D]`` of the
    object's full phrase in that colour: the case of both re-colouring figures."""
    scene = random_scene(rng, 1)
    obj = scene.objects[0]
    color = str(rng.choice([c for c in COLORS if c != obj.color]))
    caption = FULL_TEMPLATE.format(color=color, shape=obj.shape, material=obj.material)
    return scene, color, encode_prompts(pipe.text_encoder, pipe.tokenizer, [caption])


def _guided_eps(pipe, x: torch.Tensor, t: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided noise prediction ``[1, C, h, w]`` at the 0-d timestep ``t``."""
    eps_u, eps_c = pipe.unet(torch.cat([x, x]), torch.stack([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def _one_step_image(pipe, latent: torch.Tensor, noise: torch.Tensor, t: int, uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """``float [H, W, 3]``: the clean image predicted in one guided step from ``latent`` noised to
    ``t`` with ``noise`` (both ``[1, C, h, w]``)."""
    alpha = pipe.scheduler.alphas_cumprod[t].float()
    tt = torch.tensor([t])
    x = pipe.scheduler.add_noise(latent, noise, tt)
    eps = _guided_eps(pipe, x, tt[0], uncond, cond, guidance)
    return _decode(pipe, (x - (1 - alpha).sqrt() * eps) / alpha.sqrt())


@torch.no_grad()
def attention_figures(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> dict[int, dict[str, float]]:
    """``{t: {"bos_mass", "word_mass", "eos_mass", "own_mask_ratio", "other_mask_ratio"}}``
    (see the module docstring). Leaves ``pipe.unet``'s attention processors as they were."""
    unet, tok = pipe.unet, pipe.tokenizer
    saved = unet.attn_processors
    recorder = CrossAttentionRecorder()
    unet.set_attn_processor({name: recorder if is_cross_attention(name) else p for name, p in saved.items()})
    rng = np.random.default_rng(config.seed)
    figures = {t: {k: [] for k in ("bos_mass", "word_mass", "eos_mass", "own_mask_ratio", "other_mask_ratio")} for t in config.timesteps}
    try:
        for n in _scenes(config, "attention", progress):
            scene = random_scene(rng, 2)
            layout = layout_prompt(tok, scene.caption, [o.phrase for o in scene.objects])
            eos = layout.eos_index
            latent = _latent(pipe, scene.image)
            emb = encode_prompts(pipe.text_encoder, tok, [scene.caption])
            noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(config.seed * 1000 + n))
            for t in config.timesteps:
                tt = torch.tensor([t])
                recorder.maps.clear()
                unet(pipe.scheduler.add_noise(latent, noise, tt), tt, encoder_hidden_states=emb)
                f = figures[t]
                for probs in recorder.maps:
                    p = probs[0]  # [HW, T]
                    f["bos_mass"].append(p[:, 0].mean().item())
                    f["word_mass"].append(p[:, 1:eos].sum(-1).mean().item())
                    f["eos_mass"].append(p[:, eos:].sum(-1).mean().item())
                    side = int(round(p.shape[0] ** 0.5))
                    regions = region_masks_at(scene.masks, side)  # [2, HW]
                    for i, (a, b) in enumerate(layout.spans):
                        w = p[:, a:b].sum(-1)
                        w = w / w.sum()
                        for j, key in ((i, "own_mask_ratio"), (1 - i, "other_mask_ratio")):
                            share = regions[j].mean()
                            if share > 0:
                                f[key].append(((w * regions[j]).sum() / share).item())
    finally:
        recorder.maps.clear()
        unet.set_attn_processor(saved)
    return {t: {k: float(np.mean(v)) for k, v in f.items()} for t, f in figures.items()}


def _ddim_from_999(pipe, x: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, config: ProbeConfig) -> torch.Tensor:
    """Deterministic DDIM from ``x`` ``[1, C, h, w]`` at t = 999 to a clean latent in
    ``config.recolour_steps`` evenly spaced steps with guidance ``config.recolour_guidance``."""
    alphas = pipe.scheduler.alphas_cumprod.float()
    timesteps = torch.linspace(999, 0, config.recolour_steps + 1).round().long()
    for i in range(config.recolour_steps):
        t = timesteps[i]
        eps = _guided_eps(pipe, x, t, uncond, cond, config.recolour_guidance)
        a_t = alphas[t]
        a_next = alphas[timesteps[i + 1]] if i + 1 < config.recolour_steps else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


@torch.no_grad()
def recolour_success(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> float:
    """Mean share of an object's pixels in the new colour after re-colouring from t = 999
    (see the module docstring)."""
    return recolour_figures(pipe, config, progress)["recolour_success"]


@torch.no_grad()
def recolour_figures(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> dict[str, float]:
    """``{"recolour_success", "recolour_colour_share"}``, means over scenes (see the module
    docstring; a scene whose output shows no object colour counts 0 in the colour share)."""
    rng = np.random.default_rng(config.seed + 7)
    uncond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])
    shares, colour_shares = [], []
    for n in _scenes(config, "re-colouring", progress):
        scene, color, cond = _recolour_case(pipe, rng)
        latent = _latent(pipe, scene.image)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(config.seed * 1000 + 500 + n))
        x = pipe.scheduler.add_noise(latent, noise, torch.tensor([999]))
        image = _decode(pipe, _ddim_from_999(pipe, x, uncond, cond, config)).round().to(torch.uint8).numpy()
        classes = classify_pixels(image, scene.background)
        mask = scene.masks[0]
        target = COLOR_NAMES.index(color)
        shares.append(float((classes.color[mask] == target).mean()))
        coloured = classes.color >= 0
        colour_shares.append(float((classes.color == target).sum() / coloured.sum()) if coloured.any() else 0.0)
    return {"recolour_success": float(np.mean(shares)), "recolour_colour_share": float(np.mean(colour_shares))}


@torch.no_grad()
def caption_control(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> dict[int, float]:
    """``{t: share of scenes whose one-step prediction takes the caption's new colour}`` for
    ``config.control_timesteps`` (see the module docstring)."""
    tones = [(name, np.array(tone, dtype=np.float32)) for name, pair in COLORS.items() for tone in pair]
    rng = np.random.default_rng(config.seed + 13)
    uncond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])
    hits = {t: [] for t in config.control_timesteps}
    for n in _scenes(config, "caption control", progress):
        scene, color, cond = _recolour_case(pipe, rng)
        latent = _latent(pipe, scene.image)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(config.seed * 1000 + 900 + n))
        for t in config.control_timesteps:
            image = _one_step_image(pipe, latent, noise, t, uncond, cond, config.control_guidance)
            mean = image.numpy()[scene.masks[0]].mean(0)
            nearest = min(tones, key=lambda nt: float(((nt[1] - mean) ** 2).sum()))[0]
            hits[t].append(float(nearest == color))
    return {t: float(np.mean(v)) for t, v in hits.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@torch.no_grad()
def shape_control(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> dict[int, float]:
    """``{t: mean IoU(new shape) - IoU(source shape)}`` of the object-coloured pixels of one-step
    predictions with a caption naming another shape, for ``config.control_timesteps`` (see the
    module docstring); in [-1, 1]."""
    rng = np.random.default_rng(config.seed + 17)
    uncond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])
    gains = {t: [] for t in config.control_timesteps}
    for n in _scenes(config, "shape control", progress):
        scene = random_scene(rng, 1)
        obj = scene.objects[0]
        shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
        cond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [FULL_TEMPLATE.format(color=obj.color, shape=shape, material=obj.material)])
        height, width = scene.image.shape[:2]
        source = shape_mask(obj.shape, obj.center, obj.size, height, width)
        new = shape_mask(shape, obj.center, obj.size, height, width)
        latent = _latent(pipe, scene.image)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(config.seed * 1000 + 700 + n))
        for t in config.control_timesteps:
            image = _one_step_image(pipe, latent, noise, t, uncond, cond, config.control_guidance)
            coloured = classify_pixels(image.round().to(torch.uint8).numpy(), scene.background).color == COLOR_NAMES.index(obj.color)
            gains[t].append(_iou(coloured, new) - _iou(coloured, source))
    return {t: float(np.mean(v)) for t, v in gains.items()}


def drawn_shape(image: np.ndarray, background: str, color: str) -> str | None:
    """The shape drawn in ``color`` in ``image`` (``uint8 [H, W, 3]``): of :data:`SHAPES`, the one
    whose silhouette, centred on the bounding box of the pixels in ``color`` (base or shade) and
    sized to its longer side, has the highest IoU with those pixels; None under 5 such pixels."""
    pixels = classify_pixels(image, background).color == COLOR_NAMES.index(color)
    if pixels.sum() < 5:
        return None
    ys, xs = np.nonzero(pixels)
    center = ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
    size = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 0.5  # pixel centres -> half-extent
    height, width = pixels.shape
    return max(SHAPES, key=lambda shape: _iou(pixels, shape_mask(shape, center, size, height, width)))


@torch.no_grad()
def shape_drawn(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> float:
    """Share of one-object captions generated from pure noise whose :func:`drawn_shape` is the
    named shape (see the module docstring; chance 1/9)."""
    rng = np.random.default_rng(config.seed + 19)
    uncond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])
    size = pipe.unet.config.sample_size
    hits = []
    for n in _scenes(config, "shapes drawn", progress):
        shape = SHAPES[n % len(SHAPES)]
        scene = random_scene(rng, 1)  # colour, material and a background to read against
        obj = scene.objects[0]
        cond = encode_prompts(pipe.text_encoder, pipe.tokenizer, [FULL_TEMPLATE.format(color=obj.color, shape=shape, material=obj.material)])
        noise = torch.randn((1, pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(config.seed * 1000 + 300 + n))
        image = _decode(pipe, _ddim_from_999(pipe, noise, uncond, cond, config)).round().to(torch.uint8).numpy()
        hits.append(float(drawn_shape(image, scene.background, obj.color) == shape))
    return float(np.mean(hits))


def run_probe(pipe, config: ProbeConfig = ProbeConfig(), progress: bool = False) -> dict:
    """Every figure of the probe as one JSON-ready dict: :data:`PROBE_KEYS` (ratios at t = 500,
    or at the probed timestep nearest to it; masses averaged over timesteps), ``by_timestep``,
    ``caption_control`` (``{str(t): share}``), ``shape_control`` (``{str(t): IoU gain}``),
    ``scenes`` and ``probed_at``. ``progress``: a tqdm bar per figure (on stderr)."""
    by_t = attention_figures(pipe, config, progress)
    headline_t = min(config.timesteps, key=lambda t: abs(t - 500))
    head = by_t[headline_t]
    result = {
        "own_mask_ratio": head["own_mask_ratio"],
        "other_mask_ratio": head["other_mask_ratio"],
        "own_other_ratio": head["own_mask_ratio"] / max(head["other_mask_ratio"], 1e-9),
    }
    for key in ("bos_mass", "word_mass", "eos_mass"):
        result[key] = float(np.mean([f[key] for f in by_t.values()]))
    result.update(recolour_figures(pipe, config, progress))
    result["shape_drawn"] = shape_drawn(pipe, config, progress)
    result["caption_control"] = {str(t): v for t, v in caption_control(pipe, config, progress).items()}
    result["shape_control"] = {str(t): v for t, v in shape_control(pipe, config, progress).items()}
    result["probed_at"] = headline_t
    result["scenes"] = config.scenes
    result["by_timestep"] = {str(t): f for t, f in by_t.items()}
    return result
