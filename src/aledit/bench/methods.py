"""Editing methods the benchmark can run, by name: a small registry.

A method is a callable ``method(image, edits, masks, seed) -> edited PIL image`` with a ``name``
and a JSON-able ``config`` (recorded with every result). A *factory* builds it from
:class:`MethodSettings`; :func:`register_method` adds one::

    @register_method("p2p")
    def build_p2p(settings: MethodSettings) -> BenchMethod:
        pipe = ...                        # load settings.model on settings.device
        return CallableMethod("p2p", config={...}, fn=lambda image, edits, masks, seed: ...)

``aledit bench run --method p2p`` then runs it. ``ale`` (ALE-Edit through
:class:`~aledit.pipeline.ALEEditPipeline`) is registered here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..edits import Edit

__all__ = [
    "BenchMethod",
    "CallableMethod",
    "MethodSettings",
    "MethodSetupError",
    "available_methods",
    "build_method",
    "register_method",
]

logger = logging.getLogger(__name__)


class MethodSetupError(Exception):
    """A method that cannot be set up: unknown name, option it does not take, model not loadable."""


@runtime_checkable
class BenchMethod(Protocol):
    """What the runner calls once per benchmark edit.

    Attributes:
        name: the method's registry name, recorded with each result.
        config: JSON-able settings that decide the output (model, steps, size, switches); two
            runs with equal ``(name, config)`` are the same experiment and share results.
    """

    name: str
    config: Mapping[str, Any]

    def __call__(self, image: Image.Image, edits: Sequence[Edit], masks, seed: int) -> Image.Image:
        """Edits ``image``.

        Args:
            image: the RGB source image.
            edits: one :class:`~aledit.edits.Edit` per object, types explicit.
            masks: ``{source phrase: mask path}`` or a :class:`~aledit.masks.MaskProvider`.
            seed: the edit's noise seed.

        Returns:
            The edited image at the source's size.
        """


@dataclass(frozen=True)
class CallableMethod:
    """A :class:`BenchMethod` made of a name, a config and a function."""

    name: str
    config: Mapping[str, Any]
    fn: Callable[[Image.Image, Sequence[Edit], Any, int], Image.Image] = field(repr=False)

    def __call__(self, image, edits, masks, seed):
        return self.fn(image, edits, masks, seed)


@dataclass(frozen=True)
class MethodSettings:
    """What every method is built from.

    Attributes:
        model: hub id or local folder of the diffusion model (``None``: the method's default).
        steps: denoising steps.
        size: working resolution (square side, multiple of 8).
        device: torch device string.
        options: method-specific switches, e.g. ``{"ore": False}`` for ALE; a factory rejects
            options it does not know.
    """

    model: str | None = None
    steps: int = 15
    size: int = 768
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)


MethodFactory = Callable[[MethodSettings], BenchMethod]
_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory | None = None):
    """Registers ``factory`` under ``name`` (usable as a decorator); a name is registered once."""

    def add(f: MethodFactory) -> MethodFactory:
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"a method named {name!r} is already registered")
        _REGISTRY[name] = f
        return f

    return add(factory) if factory is not None else add


def available_methods() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_method(name: str, settings: MethodSettings) -> BenchMethod:
    """Builds the method registered as ``name``; :class:`MethodSetupError` if it cannot be."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise MethodSetupError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return factory(settings)


# -- ALE-Edit --------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@register_method("ale")
def build_ale(settings: MethodSettings) -> BenchMethod:
    """ALE-Edit with :class:`~aledit.methods.ale.ALEConfig` fields as options (``ore``,
    ``rgb_cam``, ``background_blend``, ``self_replace``, ``dilation_ratio``, ...)."""
    from ..pipeline import DEFAULT_MODEL, ALEConfig, ALEEditPipeline

    known = {f.name for f in dataclasses.fields(ALEConfig)}
    unknown = sorted(set(settings.options) - known)
    if unknown:
        raise MethodSetupError(
            f"method 'ale' takes no option {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    try:
        config = ALEConfig(**settings.options)
    except (TypeError, ValueError) as exc:
        raise MethodSetupError(f"invalid ALE settings: {exc}") from None
    model = settings.model or DEFAULT_MODEL
    logger.info("loading %s on %s", model, settings.device)
    try:
        pipe = ALEEditPipeline.from_pretrained(model).to(settings.device)
    except Exception as exc:  # any loading failure comes from the model argument or the network  # noqa: BLE001
        raise MethodSetupError(f"could not load model {model!r}: {_first_line(exc)}") from None

    def edit(image, edits, masks, seed):
        out = pipe.edit(
            image, edits, masks, seed=seed, steps=settings.steps, size=settings.size, config=config, progress=False
        )
        return out.image

    recorded = {"model": model, "steps": settings.steps, "size": settings.size, **dataclasses.asdict(config)}
    return CallableMethod("ale", recorded, edit)
