"""aledit: training-free, text-guided multi-object image editing without attribute leakage."""

from .edits import Edit, EditType, parse_edit

__version__ = "0.1.0"

__all__ = [
    "ALEConfig",
    "ALEEditPipeline",
    "Edit",
    "EditPipeline",
    "EditType",
    "available_methods",
    "make_method",
    "method_info",
    "parse_edit",
]

_PIPELINE = ("ALEEditPipeline", "EditPipeline", "ALEConfig")
_METHODS = ("available_methods", "make_method", "method_info")


def __getattr__(name):
    # The pipeline pulls in diffusers; import it only when asked for.
    if name in _PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    if name in _METHODS:
        from .methods import registry

        return getattr(registry, name)
    raise AttributeError(name)
