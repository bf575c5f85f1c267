"""aledit: training-free, text-guided multi-object image editing without attribute leakage."""

from .edits import Edit, EditType, parse_edit

__version__ = "0.1.0"

__all__ = ["ALEEditPipeline", "ALEConfig", "Edit", "EditType", "parse_edit"]


def __getattr__(name):
    # The pipeline pulls in diffusers; import it only when asked for.
    if name in ("ALEEditPipeline", "ALEConfig"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
