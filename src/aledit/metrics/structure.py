"""Structure distance (Tumanyan et al., Splicing ViT Features; PIE-Bench): DINO key self-similarity.

For each image: resize so the shorter side is 224 (longer side at most 480; bilinear with
antialias, as torchvision's ``Resize(224, max_size=480)`` on a tensor since 0.17), ImageNet-normalise, run
DINO ViT-B/8 and take the keys of the last block's attention (layer 11 of 12), all tokens
including CLS: ``K [T, D]``. The self-similarity is ``S = cos(K_t, K_s)`` for every token pair
(``[T, T]``, norms' product clamped at 1e-8). The distance is ``mean((S_source - S_edited)^2)``,
on the whole image.

``antialias`` (default True): the resize low-pass filters first, as torchvision's tensor
``Resize`` does since 0.17 (and the ALE authors' environment, torchvision 0.22). PIE-Bench pins
torchvision 0.13, whose tensor ``Resize`` did not antialias (its ``antialias=None`` meant False);
``antialias=False`` reproduces that. On ALE-Bench's 1000x1000 images (downsampled 4.5x to 224)
the two differ: 0.4% to 13.5% of the distance on random DINO weights (issue 14's comparison).

``pie_bench_quirk`` (default True): PIE-Bench and the ALE authors feed 0-255 pixel values to the
ImageNet normalisation (``(x - 0.485) / 0.229`` with ``x`` up to 255), not 0-1. The default keeps
that, so numbers compare with the published tables; False normalises ``x / 255`` as DINO expects.

The model is transformers' ``ViTModel`` (``facebook/dino-vitb8``); keys are read with a forward
hook on the last layer's key projection. The original uses the torch-hub DINO model; the weights
are the same. :func:`load_dino` sets ``layer_norm_eps=1e-6`` as DINO's code does (the hub config
says 1e-12). For inputs whose patch grid differs from 28x28 the position embeddings are
interpolated slightly differently from the hub model (ALE-Bench's 1000x1000 images give 28x28: no
interpolation in either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import ImageLike, match_size

__all__ = [
    "DEFAULT_DINO",
    "DinoKeyExtractor",
    "dino_pixel_values",
    "dino_resize_hw",
    "key_self_similarity",
    "load_dino",
    "structure_distance",
]

DEFAULT_DINO = "facebook/dino-vitb8"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_resize_hw(height: int, width: int, short_side: int = 224, max_side: int = 480) -> tuple[int, int]:
    """Output ``(h, w)`` of torchvision's ``Resize(short_side, max_size=max_side)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    if new_long > max_side:
        new_short, new_long = int(max_side * new_short / new_long), max_side
    return (new_long, new_short) if width <= height else (new_short, new_long)


def dino_pixel_values(
    image: np.ndarray,
    pie_bench_quirk: bool = True,
    short_side: int = 224,
    max_side: int = 480,
    antialias: bool = True,
) -> torch.Tensor:
    """DINO input ``float32 [1, 3, h, w]`` from an RGB ``uint8 [H, W, 3]`` image.

    Resize (bilinear; antialiased unless ``antialias=False``, PIE-Bench's torchvision 0.13) then
    ImageNet normalisation of 0-255 values (quirk) or of 0-1 values.
    """
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    hw = dino_resize_hw(x.shape[-2], x.shape[-1], short_side, max_side)
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=antialias)
    if not pie_bench_quirk:
        x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def key_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every token pair: ``[B, T, D]`` -> ``[B, T, T]``."""
    norms = keys.norm(dim=-1, keepdim=True)  # [B, T, 1]
    return (keys @ keys.transpose(1, 2)) / torch.clamp(norms @ norms.transpose(1, 2), min=eps)


def _vit_layers(model: Any) -> Sequence[torch.nn.Module]:
    # transformers >= 5: model.layers; 4.x: model.encoder.layer.
    layers = getattr(model, "layers", None)
    if layers is None and hasattr(model, "encoder"):
        layers = getattr(model.encoder, "layer", None)
    if layers is None:
        raise AttributeError(f"cannot find the transformer layers of {type(model).__name__}; expected a ViTModel")
    return layers


def _key_projection(layer: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5: layer.attention.k_proj; 4.x: layer.attention.attention.key.
    attention = layer.attention
    for path in ("k_proj", "attention.key", "key"):
        module: Any = attention
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.Module):
            return module
    raise AttributeError(f"cannot find the key projection of {type(layer).__name__}; expected a ViT layer")


@dataclass(frozen=True, eq=False)
class DinoKeyExtractor:
    """Attention keys of one ViT layer.

    Attributes:
        model: a transformers ``ViTModel`` in eval mode.
        layer: index of the transformer layer; -1, the last (layer 11 of ViT-B/8), as PIE-Bench.
    """

    model: Any
    layer: int = -1

    @torch.no_grad()
    def keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, h, w]`` -> keys ``[B, T, D]``, ``T = 1 + (h // p) * (w // p)`` (CLS first)."""
        param = next(self.model.parameters())
        captured: list[torch.Tensor] = []
        projection = _key_projection(_vit_layers(self.model)[self.layer])
        handle = projection.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(
                pixel_values=pixel_values.to(device=param.device, dtype=param.dtype), interpolate_pos_encoding=True
            )
        finally:
            handle.remove()
        return captured[-1].float()


def structure_distance(
    dino: DinoKeyExtractor,
    source: ImageLike,
    edited: ImageLike,
    pie_bench_quirk: bool = True,
    antialias: bool = True,
) -> float:
    """``mean((S_source - S_edited)^2)`` of the DINO key self-similarities; 0 for equal images.

    ``edited`` is resized (bicubic) to the source size first, as every metric here.
    ``antialias=False`` resizes for DINO as PIE-Bench's torchvision 0.13 did (module docstring).
    """
    src, edt = match_size(source, edited)
    pixels = torch.cat(
        [
            dino_pixel_values(src, pie_bench_quirk, antialias=antialias),
            dino_pixel_values(edt, pie_bench_quirk, antialias=antialias),
        ]
    )
    sims = key_self_similarity(dino.keys(pixels))  # [2, T, T]
    return float(F.mse_loss(sims[1], sims[0]))


def load_dino(
    model_id_or_path: str | os.PathLike = DEFAULT_DINO,
    device: str | torch.device = "cpu",
    layer: int = -1,
    layer_norm_eps: float | None = 1e-6,
) -> DinoKeyExtractor:
    """Loads a ViT (DINO) by hub id or local folder; ``layer_norm_eps=None`` keeps the config's."""
    from transformers import ViTModel

    overrides = {} if layer_norm_eps is None else {"layer_norm_eps": layer_norm_eps}
    model = ViTModel.from_pretrained(os.fspath(model_id_or_path), add_pooling_layer=False, **overrides)
    return DinoKeyExtractor(model=model.to(device).eval(), layer=layer)
