"""Editing methods the benchmark can run, by name: a small registry.

A method is a callable ``method(image, edits, masks, seed) -> edited PIL image`` with a ``name``
and a JSON-able ``config`` (recorded with every result). A *factory* builds it from
:class:`MethodSettings`; :func:`register_method` adds one::

    @register_method("p2p")
    def build_p2p(settings: MethodSettings) -> BenchMethod:
        pipe = ...                        # load settings.model on settings.device
        return CallableMethod("p2p", config={...}, fn=lambda image, edits, masks, seed: ...)

``aledit bench run --method p2p`` then runs it. Every editing method of
:mod:`aledit.methods.registry` (ale, p2p, masactrl, fpe, infedit, ...) is available here without
registration, through :class:`~aledit.pipeline.EditPipeline`; :func:`register_method` is for
bench-only methods (an external tool's outputs, a baseline that is not an editing method).
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
        steps: denoising steps (``None``: the method's paper's).
        size: working resolution, square side, multiple of 8 (``None``: the method's paper's).
        device: torch device string.
        options: method-specific switches, e.g. ``{"ore": False}`` for ALE; a factory rejects
            options it does not know.
        inversion_cache: folder where DDIM / null-text inversions are kept across methods.
        give_masks: also give the masks to methods that only optionally use them (P2P's and
            InfEdit's local blend, MasaCtrl's mask-guided variant); by default, as in the ALE
            paper's Table 1, those methods find their regions from attention.
    """

    model: str | None = None
    steps: int | None = None
    size: int | None = None
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    inversion_cache: str | None = None
    give_masks: bool = False


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
    """The editing methods of :mod:`aledit.methods.registry`, then methods registered here."""
    from ..methods.registry import available_methods as editing_methods

    core = editing_methods()
    return core + tuple(sorted(n for n in _REGISTRY if n not in core))


def build_method(name: str, settings: MethodSettings) -> BenchMethod:
    """Builds method ``name`` (an editing method of the registry, or a bench-only method added
    with :func:`register_method`); :class:`MethodSetupError` if it cannot be."""
    from ..methods.registry import available_methods as editing_methods

    if name in editing_methods():
        return build_registered(name, settings)
    factory = _REGISTRY.get(name)
    if factory is None:
        raise MethodSetupError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return factory(settings)


# -- every method of aledit.methods.registry ------------------------------------------------


def build_registered(name: str, settings: MethodSettings) -> BenchMethod:
    """A registered editing method (:mod:`aledit.methods.registry`) run through
    :class:`~aledit.pipeline.EditPipeline`; ``settings.options`` are its config fields. Steps,
    size and model default to the method's paper's when not given."""
    from ..commands import first_line
    from ..methods.base import MASKS_OPTIONAL, MASKS_REQUIRED
    from ..methods.registry import MethodError, make_config, method_info
    from ..pipeline import EditPipeline

    try:
        info = method_info(name)
        config = make_config(name, settings.options)
    except MethodError as exc:
        raise MethodSetupError(str(exc)) from None
    model = settings.model or info.default_model
    steps = settings.steps or info.default_steps
    size = settings.size or info.default_size
    logger.info("loading %s on %s", model, settings.device)
    try:
        pipe = EditPipeline.from_pretrained(model).to(settings.device)
    except Exception as exc:  # any loading failure comes from the model argument or the network  # noqa: BLE001
        raise MethodSetupError(f"could not load model {model!r}: {first_line(exc)}") from None

    masks_used = info.masks == MASKS_REQUIRED or (info.masks == MASKS_OPTIONAL and settings.give_masks)

    def edit(image, edits, masks, seed):
        out = pipe.edit(
            image, edits, masks if masks_used else None, method=name, config=config, seed=seed, steps=steps,
            size=size, inversion_cache=settings.inversion_cache, progress=False,
        )
        return out.image

    recorded = {"model": model, "steps": steps, "size": size, "uses_masks": masks_used, **dataclasses.asdict(config)}
    return CallableMethod(name, recorded, edit)
