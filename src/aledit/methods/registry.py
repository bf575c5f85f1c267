"""The one registry of editing methods: the Python API, ``aledit edit --method``, ``aledit bench
run --method``, the synthetic bench and ``aledit methods`` all read it.

A method module registers itself with :func:`register`::

    @register(MethodInfo(name="p2p", title="Prompt-to-Prompt", paper="Hertz et al., ICLR 2023",
                         config_class=P2PConfig, default_model=SD14, default_steps=50, default_size=512))
    class P2PMethod: ...

:func:`make_method` builds a method from its name and options (``{"cross_replace": 0.6}``),
checking every option against the method's config dataclass before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MethodError",
    "MethodInfo",
    "available_methods",
    "describe_option",
    "make_config",
    "make_method",
    "method_info",
    "parse_options",
    "register",
]

LCM_DREAMSHAPER = "SimianLuo/LCM_Dreamshaper_v7"
SD14 = "CompVis/stable-diffusion-v1-4"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class MethodError(ValueError):
    """An unknown method, an option it does not take, or an option value out of range."""


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of a method.

    Attributes:
        name: registry name (``--method NAME``).
        title: the method's usual name.
        paper: citation of the paper it implements.
        config_class: its frozen config dataclass (every field is an option).
        default_model: the model its paper uses (hub id).
        default_steps, default_size: its paper's denoising steps and working resolution.
        sampler: the sampler it runs on, in words.
        summary: one line on what it does.
        method_class: filled in by :func:`register`.
    """

    name: str
    title: str
    paper: str
    config_class: type
    default_model: str
    default_steps: int
    default_size: int
    sampler: str
    summary: str
    method_class: type | None = None

    @property
    def masks(self) -> str:
        return self.method_class.masks

    def defaults(self) -> dict[str, Any]:
        return {f.name: getattr(self.config_class(), f.name) for f in dataclasses.fields(self.config_class)}


_REGISTRY: dict[str, MethodInfo] = {}
# Modules that register the built-in methods; importing aledit.methods imports them all.
_BUILTIN = ("ale", "p2p", "masactrl", "fpe", "infedit", "dpl", "cpam", "bindedit")


def register(info: MethodInfo):
    """Class decorator: registers ``info`` with the decorated class as its method."""

    def add(cls):
        if info.name in _REGISTRY and _REGISTRY[info.name].method_class is not cls:
            raise ValueError(f"a method named {info.name!r} is already registered")
        _REGISTRY[info.name] = dataclasses.replace(info, method_class=cls)
        return cls

    return add


def _load_builtin() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(f"aledit.methods.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"aledit.methods.{module}":
                raise


def available_methods() -> tuple[str, ...]:
    """Registered method names, in the order the README's table lists them."""
    _load_builtin()
    order = {name: i for i, name in enumerate(_BUILTIN)}
    return tuple(sorted(_REGISTRY, key=lambda n: (order.get(n, len(order)), n)))


def method_info(name: str) -> MethodInfo:
    _load_builtin()
    if name not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def _owners(option: str) -> list[str]:
    return [n for n, info in _REGISTRY.items() if option in {f.name for f in dataclasses.fields(info.config_class)}]


def make_config(name: str, options: Mapping[str, Any] | None = None):
    """The config of method ``name`` with ``options`` changed; :class:`MethodError` (one line)
    for an option it does not take or a value its config rejects."""
    info = method_info(name)
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(info.config_class)]
    for option in options:
        if option not in known:
            owners = [o for o in _owners(option) if o != name]
            hint = f" (an option of {', '.join(owners)})" if owners else ""
            raise MethodError(f"method {name!r} takes no option {option!r}{hint}; its options: {', '.join(known)}")
    try:
        return info.config_class(**options)
    except (TypeError, ValueError) as exc:
        raise MethodError(f"{name}: {exc}") from None


def make_method(method, config=None, **options):
    """A method object from a registry name (``"p2p"``), with ``config`` or ``options``; a
    method object is returned as it is."""
    if not isinstance(method, str):
        if config is not None or options:
            raise MethodError("pass config/options with a method name, not with a method object")
        return method
    info = method_info(method)
    if config is not None:
        if options:
            raise MethodError("pass either config or options, not both")
        if not isinstance(config, info.config_class):
            raise MethodError(f"method {method!r} takes a {info.config_class.__name__}, got {type(config).__name__}")
        return info.method_class(config)
    return info.method_class(make_config(method, options))


def _field_types(config_class) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _parse_value(text: str, hint) -> Any:
    """Parses CLI text into a config field's type (bool, int, float, str, tuples, optionals)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_value(text, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"cannot parse {text!r}")
    if origin is typing.Literal:
        if text not in args:
            raise ValueError(f"expected one of {', '.join(map(str, args))}, got {text!r}")
        return text
    if origin is tuple:
        items = [t for t in text.split(",") if t.strip()]
        inner = args[0] if args else str
        return tuple(_parse_value(t.strip(), inner) for t in items)
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    return text


def parse_options(name: str, items: list[str]) -> dict[str, Any]:
    """``["cross_replace=0.6", "local_blend=false"]`` -> typed options of method ``name``
    (``-`` and ``_`` are the same in option names). :class:`MethodError` on a mistake."""
    info = method_info(name)
    hints = _field_types(info.config_class)
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise MethodError(f"malformed --option {item!r}: expected NAME=VALUE, e.g. cross_replace=0.6")
        if key not in hints:
            make_config(name, {key: None})  # raises the one-line "takes no option" error
        try:
            options[key] = _parse_value(text.strip(), hints[key])
        except ValueError as exc:
            raise MethodError(f"{name}: option {key}: {exc}") from None
    return options


def describe_option(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "()"
    return str(value)
