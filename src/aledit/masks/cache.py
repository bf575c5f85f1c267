"""On-disk mask cache: each (image, phrase, provider settings) is computed once.

:class:`CachedMaskProvider` wraps any :class:`~aledit.masks.MaskProvider`. A mask is stored as one
PNG (mode ``"L"``, 255 = object) at ``<cache_dir>/<key>.png`` where ``key`` is the SHA-256 of a
stable JSON (sorted keys, no spaces) of

* ``image``: :func:`image_digest`, SHA-256 of the image's mode, size, palette and pixels (so a
  re-saved or renamed file with the same pixels hits, a one-pixel change misses);
* ``phrase``: the phrase exactly as asked for (case and spaces matter);
* ``provider``: the provider's class and its ``cache_key()`` (model ids, revisions, dtype,
  thresholds, dilation), plus the caller's ``key_parts``;
* ``format``: the cache layout version.

The same JSON is written into the PNG's ``aledit-mask-key`` text chunk, for inspection. Files
appear atomically (written to a temporary file in the same folder, then ``os.replace``), so a
concurrent reader or an interrupted run never sees half a mask. Errors raised by the provider are
not cached. A cache file that cannot be read is recomputed and overwritten; a cache that cannot be
written logs a warning and the masks are still returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .ops import MaskError
from .provider import MaskProvider

__all__ = ["CACHE_FORMAT", "CachedMaskProvider", "image_digest", "mask_cache_key", "stable_json"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
PNG_KEY_CHUNK = "aledit-mask-key"


def image_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of an image's content: mode, size, palette (if any) and pixel bytes."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    if image.mode in ("P", "PA") and image.getpalette() is not None:
        h.update(bytes(image.getpalette()))
        h.update(b":")
    h.update(image.tobytes())
    return h.hexdigest()


def stable_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text.

    Raises:
        TypeError: for values JSON cannot hold (tensors, objects, NaN), naming the value.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"mask cache key parts must be JSON values (str, int, float, bool, None, lists, dicts with str keys): "
            f"{exc}; convert the offending setting, e.g. str(torch.float16) or float(tensor)"
        ) from None


def mask_cache_key(image_sha256: str, phrase: str, provider: dict[str, Any]) -> tuple[str, str]:
    """The cache key of one mask.

    Returns:
        ``(sha256 hex of the JSON, the JSON)``.
    """
    text = stable_json({"format": CACHE_FORMAT, "image": image_sha256, "phrase": phrase, "provider": provider})
    return hashlib.sha256(text.encode()).hexdigest(), text


class CachedMaskProvider:
    """A :class:`~aledit.masks.MaskProvider` that stores its provider's masks on disk.

    Args:
        provider: any mask provider. Its ``cache_key()`` (if it has one) is part of every key and is
            read at each call, so changing e.g. ``provider.box_threshold`` misses the cache.
        cache_dir: folder of the PNGs (created if missing); may be shared between runs and
            processes.
        key_parts: extra JSON values that change the masks but the provider does not report (e.g.
            ``{"weights": "v2"}`` for models built in memory). Required when the provider has no
            ``cache_key()``.

    Attributes:
        hits, misses: masks read from the cache and masks computed, since construction.
    """

    def __init__(self, provider: MaskProvider, cache_dir: str | os.PathLike, key_parts: dict[str, Any] | None = None):
        if not callable(provider):
            raise TypeError(f"provider must be a MaskProvider (callable as provider(image, phrases)), got {provider!r}")
        if not hasattr(provider, "cache_key") and key_parts is None:
            raise ValueError(
                f"{type(provider).__name__} has no cache_key(), so its masks cannot be told apart on disk; "
                "pass key_parts={...} naming every setting that changes its masks (models, thresholds, ...)"
            )
        self.provider = provider
        self.key_parts = None if key_parts is None else dict(key_parts)
        stable_json(self.key_parts)  # fail now, not at the first call
        self.cache_dir = Path(cache_dir)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the mask cache folder {os.fspath(self.cache_dir)!r}: {exc}; pick a writable folder") from exc
        self.hits = 0
        self.misses = 0

    def cache_key(self) -> dict[str, Any]:
        """The provider part of every key: class, its ``cache_key()`` and ``key_parts``."""
        cls = type(self.provider)
        settings = self.provider.cache_key() if hasattr(self.provider, "cache_key") else None
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": settings, "extra": self.key_parts}

    def path_for(self, image: Image.Image, phrase: str) -> Path:
        """Where the mask of ``phrase`` in ``image`` is (or would be) stored."""
        key, _ = mask_cache_key(image_digest(image), phrase, self.cache_key())
        return self.cache_dir / f"{key}.png"

    def __call__(self, image: Image.Image, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{phrase: [H, W] bool}``; only phrases missing from the cache reach the provider (in one call)."""
        if isinstance(phrases, str):
            raise TypeError(f"phrases must be a list of strings, got the string {phrases!r}; wrap it: [{phrases!r}]")
        phrases = list(dict.fromkeys(phrases))
        digest = image_digest(image)
        provider_key = self.cache_key()
        keys = {p: mask_cache_key(digest, p, provider_key) for p in phrases}

        out: dict[str, torch.Tensor] = {}
        missing = []
        for phrase in phrases:
            mask = self._read(self.cache_dir / f"{keys[phrase][0]}.png")
            if mask is None:
                missing.append(phrase)
            else:
                out[phrase] = mask
        self.hits += len(out)
        if out:
            logger.debug("mask cache: %d hit(s) in %s", len(out), self.cache_dir)

        if missing:
            logger.info("mask cache: computing %s", ", ".join(repr(p) for p in missing))
            computed = self.provider(image, missing)
            for phrase in missing:
                if phrase not in computed:
                    raise MaskError(
                        f"{type(self.provider).__name__} returned no mask for {phrase!r} "
                        f"(returned: {', '.join(repr(k) for k in computed) or 'none'})"
                    )
                mask = torch.as_tensor(computed[phrase]).bool().cpu()
                if mask.ndim != 2:
                    raise MaskError(f"{type(self.provider).__name__} returned a mask of shape {tuple(mask.shape)} "
                                    f"for {phrase!r}; a provider must return [H, W] masks")
                key, key_json = keys[phrase]
                self._write(self.cache_dir / f"{key}.png", mask, key_json)
                out[phrase] = mask
            self.misses += len(missing)
        return {p: out[p] for p in phrases}

    # -- files ------------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("L")) > 0
        except (OSError, ValueError, UnidentifiedImageError) as exc:
            logger.warning("mask cache: unreadable %s (%s); recomputing it", path, exc)
            return None
        return torch.from_numpy(np.ascontiguousarray(array))

    @staticmethod
    def _write(path: Path, mask: torch.Tensor, key_json: str) -> None:
        """Writes ``mask`` ``[H, W]`` bool to ``path`` atomically (temporary file + ``os.replace``)."""
        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_KEY_CHUNK, key_json)
        image = Image.fromarray(mask.numpy().astype(np.uint8) * 255)  # mode "L"
        from ..io import write_atomic

        def write(f) -> None:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())

        try:  # a temporary file renamed into place, with the mode a plain open() gives (0666 - umask)
            write_atomic(path, ".tmp", write)
        except OSError as exc:
            logger.warning("mask cache: could not write %s (%s); the mask is used but not cached", path, exc)
