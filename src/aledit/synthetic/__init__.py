"""A procedural world of shapes for measuring edits exactly.

:mod:`.scenes` draws scenes (image, per-object masks, caption), generates edits following the
ALE-Bench templates and renders their ideal result; :mod:`.metrics` scores any edited image from
pixels and the known masks (edit success, target-internal and target-external leakage,
preservation). Pure numpy; no network, no model.
"""

from .metrics import EditScores, ObjectScores, classify_pixels, score_edit
from .scenes import (
    BACKGROUNDS,
    COLORS,
    MATERIALS,
    SHAPES,
    ObjectEdit,
    Scene,
    SceneEdit,
    SceneObject,
    SceneSpec,
    SyntheticError,
    apply_edit,
    make_edit,
    random_edit,
    random_scene,
    render,
    render_edit,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MATERIALS",
    "SHAPES",
    "EditScores",
    "ObjectEdit",
    "ObjectScores",
    "Scene",
    "SceneEdit",
    "SceneObject",
    "SceneSpec",
    "SyntheticError",
    "apply_edit",
    "classify_pixels",
    "make_edit",
    "random_edit",
    "random_scene",
    "render",
    "render_edit",
    "score_edit",
]
