"""CLIP score of (masked) images against text, as torchmetrics' ``CLIPScore`` defines it.

``CLIP(I, y) = 100 * max(cos(E_img(I), E_txt(y)), 0)``. A region is scored by zeroing every pixel
outside it: ``uint8(I * m)`` with ``I`` in 0-255 and ``m`` in ``[0, 1]`` (the float product is
truncated, as numpy's ``np.uint8`` does in the authors' code); the black pixels stay in the image
the encoder sees.

The encoder is anything with ``embed_images`` / ``embed_texts`` (:class:`ClipEncoder`), so the
formulas can be checked with a stand-in; :func:`load_clip` wraps a transformers ``CLIPModel``.
Texts longer than CLIP's 77 tokens are truncated by the tokenizer keeping the EOS token
(torchmetrics instead cuts the ids, dropping EOS); ALE-Bench prompts are far shorter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .inputs import ImageLike, to_rgb_array

__all__ = [
    "DEFAULT_CLIP",
    "ClipEncoder",
    "HFClipEncoder",
    "clip_score",
    "clip_scores",
    "load_clip",
    "mask_image",
]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@runtime_checkable
class ClipEncoder(Protocol):
    """Image and text embeddings in a shared space (not necessarily normalised)."""

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB ``uint8 [H, W, 3]`` images -> ``[B, D]``."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> ``[B, D]``."""
        ...


def mask_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8(image * mask)``: RGB ``uint8 [H, W, 3]`` times ``[H, W]`` in ``[0, 1]``, truncated."""
    return (image * np.asarray(mask, dtype=np.float64)[:, :, None]).astype(np.uint8)


def clip_scores(encoder: ClipEncoder, images: Sequence[ImageLike], texts: Sequence[str]) -> torch.Tensor:
    """``100 * max(cos, 0)`` of every image against every text, ``[len(images), len(texts)]``.

    One batched call per modality; pick the pairs you need from the table.
    """
    image_features = encoder.embed_images([to_rgb_array(im) for im in images]).double()
    text_features = encoder.embed_texts(list(texts)).double().to(image_features.device)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return torch.clamp(100.0 * image_features @ text_features.T, min=0.0).cpu()


def clip_score(encoder: ClipEncoder, image: ImageLike, text: str) -> float:
    """``100 * max(cos(E_img(image), E_txt(text)), 0)``."""
    return float(clip_scores(encoder, [image], [text])[0, 0])


def _features(output: Any) -> torch.Tensor:
    # transformers < 5 returns the projected embeddings; >= 5 a BaseModelOutputWithPooling.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass(frozen=True, eq=False)
class HFClipEncoder:
    """A transformers ``CLIPModel`` with its image processor and tokenizer as a :class:`ClipEncoder`.

    Attributes:
        model: ``CLIPModel`` in eval mode.
        image_processor: a CLIP image processor (resize shortest side, centre crop, normalise).
        tokenizer: a CLIP tokenizer.
        batch_size: images per forward pass.
    """

    model: Any
    image_processor: Any
    tokenizer: Any
    batch_size: int = 8

    @property
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            pixels = self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(device=self._param.device, dtype=self._param.dtype)
            out.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        max_length = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return _features(
            self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self._param.device),
                attention_mask=tokens["attention_mask"].to(self._param.device),
            )
        )


def _pil_clip_image_processor_class():
    # The PIL-backed processor resizes like the processor torchmetrics used (transformers 4.x,
    # slow) and needs no torchvision. transformers >= 5 names it CLIPImageProcessorPil.
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def load_clip(
    model_id_or_path: str | os.PathLike = DEFAULT_CLIP,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HFClipEncoder:
    """Loads a CLIP model, image processor and tokenizer by hub id or local folder."""
    from transformers import AutoTokenizer, CLIPModel

    path = os.fspath(model_id_or_path)
    model = CLIPModel.from_pretrained(path).to(device=device, dtype=dtype).eval()
    image_processor = _pil_clip_image_processor_class().from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return HFClipEncoder(model=model, image_processor=image_processor, tokenizer=tokenizer)
