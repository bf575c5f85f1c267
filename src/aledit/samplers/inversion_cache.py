"""A folder of DDIM / null-text inversions, so several methods on one image invert once.

Each inversion is one safetensors file named by a key: the sha256 of a canonical JSON of
whatever determines it (the caller passes the image's latent digest, the model's identity, the
prompt, the step count, the settings). Files are written atomically; a file that cannot be read
back is a cache miss (logged), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..io import _write_atomic
from .ddim import Inversion

__all__ = ["InversionCache", "tensor_digest"]

logger = logging.getLogger(__name__)

_FORMAT = "aledit-inversion-1"


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's dtype, shape and bytes; the same on every device."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _canonical(value):
    if isinstance(value, torch.Tensor):
        return tensor_digest(value)
    raise TypeError(
        f"inversion cache key parts must be JSON values or tensors, got {type(value).__name__}; "
        "pass a string or number that identifies it"
    )


class InversionCache:
    """Inversions kept as ``<directory>/<key>.safetensors``.

    Stored per inversion: ``latents.<k>`` ``[1, C, h, w]`` (``N + 1``), ``timesteps`` ``[N]``,
    ``alphas`` ``[N + 1]``, ``null_embeddings.<i>`` and ``source_embeddings.<i>`` ``[1, T, D]``
    (``N`` each, when present) and, in
    the metadata, the format, the device the tensors were on and which latents were
    channels-last (restored on load: a conv's rounding depends on the memory format, so an edit
    from a loaded inversion is bit-for-bit the edit from a fresh one). ``stats`` are not
    stored: a loaded inversion cost no UNet pass, so its ``stats`` are empty.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)

    @staticmethod
    def key(**parts) -> str:
        """sha256 (hex) of the canonical JSON of ``parts`` (sorted keys; tensors by digest)."""
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=_canonical)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.safetensors")

    def load(self, key: str, device: str | torch.device | None = None) -> Inversion | None:
        """The inversion stored under ``key``, or ``None`` when there is none or it cannot be read.

        Tensors come back on ``device`` (default: the device they were saved from, or the CPU
        where that device is not available here).
        """
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {_FORMAT!r}")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            for name in filter(None, meta.get("channels_last", "").split(",")):
                tensors[name] = tensors[name].contiguous(memory_format=torch.channels_last)
            n = int(meta["num_steps"])
            latents = tuple(tensors[f"latents.{k}"] for k in range(n + 1))
            nulls = sources = None
            if meta.get("null_text") == "1":
                nulls = tuple(tensors[f"null_embeddings.{i}"] for i in range(n))
            if meta.get("source_embeddings") == "1":
                sources = tuple(tensors[f"source_embeddings.{i}"] for i in range(n))
            inversion = Inversion(latents, tensors["timesteps"], tensors["alphas"], nulls, source_embeddings=sources)
            saved_on = _device(meta.get("device", "cpu"))
        except Exception as exc:  # a truncated, foreign or corrupt file: invert again
            logger.warning("ignoring unreadable inversion cache file %s (%s)", path, exc)
            return None
        return _to_device(inversion, torch.device(device) if device is not None else saved_on)

    def save(self, key: str, inversion: Inversion) -> None:
        """Stores ``inversion`` under ``key`` (atomically: readers never see a partial file)."""
        tensors = {f"latents.{k}": x for k, x in enumerate(inversion.latents)}
        tensors["timesteps"] = inversion.timesteps
        tensors["alphas"] = inversion.alphas
        for i, null in enumerate(inversion.null_embeddings or ()):
            tensors[f"null_embeddings.{i}"] = null
        for i, source in enumerate(inversion.source_embeddings or ()):
            tensors[f"source_embeddings.{i}"] = source
        channels_last = [name for name, t in tensors.items() if _is_channels_last(t)]
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        meta = {
            "format": _FORMAT,
            "num_steps": str(inversion.num_steps),
            "null_text": "1" if inversion.null_embeddings is not None else "0",
            "source_embeddings": "1" if inversion.source_embeddings is not None else "0",
            "device": str(inversion.latents[0].device),
            "channels_last": ",".join(channels_last),
        }
        os.makedirs(self.directory, exist_ok=True)
        data = safetensors_bytes(tensors, metadata=meta)
        _write_atomic(self.path(key), ".safetensors", lambda f: f.write(data))


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _device(name) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    return device


def _to_device(inversion: Inversion, device: torch.device) -> Inversion:
    nulls, sources = inversion.null_embeddings, inversion.source_embeddings
    return Inversion(
        tuple(x.to(device) for x in inversion.latents),
        inversion.timesteps.to(device),
        inversion.alphas.to(device),
        tuple(u.to(device) for u in nulls) if nulls is not None else None,
        source_embeddings=tuple(c.to(device) for c in sources) if sources is not None else None,
    )
