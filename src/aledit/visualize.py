"""Pictures people would rather look at than read: mask overlays and side-by-side edits."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "mask_overlay", "side_by_side"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def mask_overlay(image: Image.Image, masks: torch.Tensor, names: list[str] | tuple[str, ...], alpha: float = 0.5) -> Image.Image:
    """Colours each mask ``[N, h, w]`` (any resolution, resized to the image) over ``image`` and
    writes its name in the same colour."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    out = base.copy()
    for i, mask in enumerate(masks):
        m = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).resize(image.size, Image.NEAREST)
        sel = np.asarray(m) > 127
        out[sel] = (1 - alpha) * base[sel] + alpha * np.array(PALETTE[i % len(PALETTE)], np.float32)
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = _font(max(10, image.height // 24))
    y = font.size // 3
    for i, name in enumerate(names):
        box = draw.textbbox((0, 0), name, font=font)
        draw.rectangle([0, y, box[2] + font.size // 2, y + box[3] + font.size // 4], fill=(0, 0, 0))
        draw.text((font.size // 4, y), name, fill=PALETTE[i % len(PALETTE)], font=font)
        y += box[3] + font.size // 2
    return result


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def side_by_side(images: list[Image.Image], labels: list[str], height: int = 384) -> Image.Image:
    """Places images in a row at a common height, each with a caption above it."""
    resized = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    caption = 18
    canvas = Image.new("RGB", (sum(im.width for im in resized) + 4 * (len(resized) - 1), height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for im, label in zip(resized, labels):
        canvas.paste(im, (x, caption))
        draw.text((x + 4, 2), label, fill=(0, 0, 0), font=_font(13))
        x += im.width + 4
    return canvas
