"""Editing methods, each a config dataclass plus a class that composes attention processors,
latent hooks and embeddings on a sampler; :mod:`.registry` lists them by name."""

from .ale import ALEConfig, ALEMethod
from .base import EditMethod, EditPlan, Guidance, MethodContext
from .registry import MethodError, MethodInfo, available_methods, make_method, method_info, register

__all__ = [
    "ALEConfig",
    "ALEMethod",
    "EditMethod",
    "EditPlan",
    "Guidance",
    "MethodContext",
    "MethodError",
    "MethodInfo",
    "available_methods",
    "make_method",
    "method_info",
    "register",
]
