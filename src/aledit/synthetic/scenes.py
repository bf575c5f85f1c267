"""A procedural world of coloured, textured shapes with exact masks, captions and ideal edits.

Every scene is a small RGB image (default 64x64) of 1-3 objects on a background. An object is a
*shape* (:data:`SHAPES`), a *colour* (:data:`COLORS`) and a *material* (:data:`MATERIALS`), drawn
at a centre and size. Everything is known exactly, so an edit made by any method can be scored
from pixels alone (:mod:`aledit.synthetic.metrics`).

Colours. Each colour has two fixed RGB tones: its *base* and its *shade* (a darker tone of the
same hue; black's shade is a dark grey, the only way to make black show a texture). All 18 object
tones are more than 71 apart (Euclidean RGB), so a pixel's colour is known from its nearest tone.
Backgrounds (:data:`BACKGROUNDS`: mint, lavender, khaki) are pastel tones that are never an
object colour and lie at least 90 from every object tone; a background may be lightly textured
by uniform per-pixel noise of at most ``background_noise`` per channel (see :class:`SceneSpec`).

Materials are textures of the object's two tones, anchored to the *image* grid (not to the
object) in cells of ``texture_cell(height, width) = max(1, min(H, W) // 32)`` pixels (2 at 64):

=========  ======================================================  ===========================
material   shade (darker tone) where                               what it looks like
=========  ======================================================  ===========================
paint      never                                                   flat colour ("plain")
stripes    ``(y // c) % 2 == 1``                                   horizontal stripes
dots       ``(x // c) % 2 == 1 and (y // c) % 2 == 1``             a grid of small dark dots
checkers   ``(x // c + y // c) % 2 == 1``                          a checkerboard
=========  ======================================================  ===========================

Because texture is anchored to the image, re-rendering an object with another shape or colour
keeps the same texture phase: the ideal edit of :func:`render_edit` is unique.

Phrases (one scheme for captions and edits, following appendix B of the ALE paper):

* an object in full, as used in scene captions: ``"{color}-colored {shape} made of {material}"``,
  e.g. ``"red-colored circle made of stripes"`` (plain material is ``"made of paint"``; the paper
  avoids colour+material phrases for real photos, but here both attributes are always defined);
* a scene caption: the full object phrases in drawing order (back to front) joined with
  ``" and "`` and no article (:func:`aledit.prompts.join_phrases`), e.g.
  ``"red-colored circle made of paint and blue-colored square made of dots"``; the background is
  not mentioned;
* an edit's source phrase is the object's shape noun (``"circle"``), as the paper names source
  objects by their noun; a scene therefore never holds two objects of the same shape
  (:func:`random_scene` guarantees it; :func:`random_edit` checks it);
* an edit's target phrase follows the paper's templates (:data:`TARGET_TEMPLATES`):
  color ``"{color}-colored {shape}"``, object ``"{shape}"`` (the new shape), material
  ``"{shape} made of {material}"``, color+object ``"{color}-colored {shape}"`` (new shape),
  object+material ``"{shape} made of {material}"`` (new shape).
  :func:`aledit.edits.infer_edit_type` recovers the edit type from every such pair.

Geometry. ``center`` is ``(x, y)`` in pixels (x to the right, y down, pixel ``(x, y)`` sampled at
its integer coordinates); ``size`` is the half-extent in pixels: every shape lies inside the
square ``center +- size``. Objects are drawn back to front in list order; a later object hides an
earlier one. ``masks[i]`` holds the pixels where object ``i`` is *visible*; ``silhouettes[i]`` the
pixels its shape covers before occlusion (inside the frame); the visible fraction is their ratio.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from ..edits import Edit, EditType
from ..prompts import join_phrases

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "EDITED_ATTRIBUTES",
    "MATERIALS",
    "SHAPES",
    "TARGET_TEMPLATES",
    "ObjectEdit",
    "Scene",
    "SceneEdit",
    "SceneObject",
    "SceneSpec",
    "SyntheticError",
    "apply_edit",
    "make_edit",
    "object_phrase",
    "random_edit",
    "random_scene",
    "render",
    "render_edit",
    "shape_mask",
    "target_phrase",
    "texture_cell",
    "texture_pattern",
]

logger = logging.getLogger(__name__)


class SyntheticError(ValueError):
    """A scene or edit specification that cannot be rendered or generated."""


# name -> (base RGB, shade RGB). Separation checked in tests: > 71 between any two tones.
COLORS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red": ((220, 40, 40), (105, 20, 20)),
    "green": ((40, 170, 60), (25, 95, 35)),
    "blue": ((40, 80, 230), (25, 55, 160)),
    "yellow": ((245, 220, 40), (165, 150, 25)),
    "purple": ((150, 60, 200), (80, 30, 105)),
    "orange": ((250, 130, 20), (150, 75, 10)),
    "white": ((245, 245, 245), (160, 160, 160)),
    "black": ((20, 20, 20), (100, 100, 100)),
    "cyan": ((40, 210, 220), (25, 140, 145)),
}

# Never an object colour; >= 90 from every object tone, >= 55 from each other.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "mint": (150, 235, 210),
    "lavender": (190, 165, 250),
    "khaki": (225, 225, 145),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "heart", "ring", "cross", "crescent")

MATERIALS: tuple[str, ...] = ("paint", "stripes", "dots", "checkers")

# Which attributes an edit type changes.
EDITED_ATTRIBUTES: dict[EditType, frozenset[str]] = {
    EditType.COLOR: frozenset({"color"}),
    EditType.OBJECT: frozenset({"shape"}),
    EditType.MATERIAL: frozenset({"material"}),
    EditType.COLOR_OBJECT: frozenset({"color", "shape"}),
    EditType.OBJECT_MATERIAL: frozenset({"shape", "material"}),
}

# Appendix B templates; fields are the *target* object's attributes.
TARGET_TEMPLATES: dict[EditType, str] = {
    EditType.COLOR: "{color}-colored {shape}",
    EditType.OBJECT: "{shape}",
    EditType.MATERIAL: "{shape} made of {material}",
    EditType.COLOR_OBJECT: "{color}-colored {shape}",
    EditType.OBJECT_MATERIAL: "{shape} made of {material}",
}

FULL_TEMPLATE = "{color}-colored {shape} made of {material}"


def _check_choice(kind: str, value, choices) -> None:
    if value not in choices:
        raise SyntheticError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene (a specification; nothing is drawn yet).

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        material: one of :data:`MATERIALS`.
        center: ``(x, y)`` in pixels, x to the right, y down.
        size: half-extent in pixels; the shape lies inside ``center +- size``.
    """

    shape: str
    color: str
    material: str
    center: tuple[float, float]
    size: float

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, COLORS)
        _check_choice("material", self.material, MATERIALS)
        center = tuple(float(c) for c in self.center)
        if len(center) != 2 or not all(math.isfinite(c) for c in center):
            raise SyntheticError(f"center must be two finite numbers (x, y), got {self.center!r}")
        object.__setattr__(self, "center", center)
        if not (math.isfinite(self.size) and self.size > 0):
            raise SyntheticError(f"size (half-extent in pixels) must be positive, got {self.size!r}")
        object.__setattr__(self, "size", float(self.size))

    @property
    def phrase(self) -> str:
        """The full phrase used in captions, e.g. ``"red-colored circle made of stripes"``."""
        return object_phrase(self)


@dataclass(frozen=True)
class SceneSpec:
    """Everything :func:`render` needs; rendering is a pure function of this.

    Attributes:
        height, width: image size in pixels.
        objects: drawn back to front.
        background: one of :data:`BACKGROUNDS`.
        background_noise: light texture: each background pixel and channel gets an integer offset
            uniform in ``[-background_noise, background_noise]``; 0 is a flat background.
        noise_seed: seed of that noise (a ``numpy`` Generator), so renders are reproducible.
    """

    height: int
    width: int
    objects: tuple[SceneObject, ...]
    background: str = "mint"
    background_noise: int = 0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if int(self.height) < 4 or int(self.width) < 4:
            raise SyntheticError(f"image must be at least 4x4 pixels, got {self.height}x{self.width}")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "objects", tuple(self.objects))
        for obj in self.objects:
            if not isinstance(obj, SceneObject):
                raise SyntheticError(f"objects must be SceneObject instances, got {type(obj).__name__}")
        _check_choice("background", self.background, BACKGROUNDS)
        if not 0 <= int(self.background_noise) <= 20:
            raise SyntheticError(
                f"background_noise must be in [0, 20] (it must stay a light texture), got {self.background_noise}"
            )
        object.__setattr__(self, "background_noise", int(self.background_noise))

    @property
    def caption(self) -> str:
        return join_phrases([obj.phrase for obj in self.objects])


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene. Arrays are read-only.

    Attributes:
        spec: what was drawn (objects, background, noise).
        image: ``uint8 [H, W, 3]``.
        masks: ``bool [N, H, W]``, the visible pixels of each object; pairwise disjoint.
        silhouettes: ``bool [N, H, W]``, each object's shape before occlusion (inside the frame).
        visible_fractions: per object, ``masks[i].sum() / silhouettes[i].sum()``.
        caption: ``spec.caption``.
    """

    spec: SceneSpec
    image: np.ndarray
    masks: np.ndarray
    silhouettes: np.ndarray
    visible_fractions: tuple[float, ...]
    caption: str

    @property
    def objects(self) -> tuple[SceneObject, ...]:
        return self.spec.objects

    @property
    def background(self) -> str:
        return self.spec.background

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return BACKGROUNDS[self.spec.background]

    @property
    def background_mask(self) -> np.ndarray:
        """``bool [H, W]``: pixels where no object is visible."""
        return ~self.masks.any(axis=0)


def object_phrase(obj: SceneObject) -> str:
    """``"{color}-colored {shape} made of {material}"``: the caption phrase of one object."""
    return FULL_TEMPLATE.format(color=obj.color, shape=obj.shape, material=obj.material)


def target_phrase(target: SceneObject, edit_type: EditType) -> str:
    """The appendix-B target phrase describing ``target`` (the object after the edit)."""
    template = TARGET_TEMPLATES[EditType(edit_type)]
    return template.format(color=target.color, shape=target.shape, material=target.material)


# ---------------------------------------------------------------------------------------------
# Drawing


def _in_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorized over points. ``vertices``: ``[K, 2]``."""
    u, v = np.broadcast_arrays(u, v)
    inside = np.zeros(u.shape, dtype=bool)
    for (a, b), (c, d) in zip(vertices.tolist(), np.roll(vertices, -1, axis=0).tolist()):
        if b == d:
            continue
        crosses = (b > v) != (d > v)
        inside ^= crosses & (u < (c - a) * (v - b) / (d - b) + a)
    return inside


_STAR = np.array(
    [
        (r * math.cos(-math.pi / 2 + k * math.pi / 5), r * math.sin(-math.pi / 2 + k * math.pi / 5))
        for k, r in zip(range(10), itertools.cycle((1.0, 0.5)))
    ]
)
_TRIANGLE = np.array([(0.0, -1.0), (1.0, 0.75), (-1.0, 0.75)])


def _unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape membership in unit coordinates (``u, v`` in ``[-1, 1]``, v down)."""
    if shape == "circle":
        return u * u + v * v < 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "triangle":
        return _in_polygon(u, v, _TRIANGLE)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "star":
        return _in_polygon(u, v, _STAR)
    if shape == "heart":
        x, y = 1.14 * u, 0.125 - 1.125 * v
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 >= 0.55**2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    if shape == "crescent":
        return (u * u + v * v < 1.0) & ((u - 0.5) ** 2 + v * v > 0.85**2)
    raise SyntheticError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def shape_mask(shape: str, center: tuple[float, float], size: float, height: int, width: int) -> np.ndarray:
    """``bool [height, width]``: pixels covered by ``shape`` at ``center`` with half-extent ``size``.

    Only the bounding box ``center +- size`` is evaluated, so this costs O(size^2).
    """
    cx, cy = center
    out = np.zeros((height, width), dtype=bool)
    x0, x1 = max(0, math.ceil(cx - size)), min(width - 1, math.floor(cx + size))
    y0, y1 = max(0, math.ceil(cy - size)), min(height - 1, math.floor(cy + size))
    if x0 > x1 or y0 > y1:
        return out
    u = (np.arange(x0, x1 + 1, dtype=np.float64) - cx) / size
    v = (np.arange(y0, y1 + 1, dtype=np.float64) - cy) / size
    out[y0 : y1 + 1, x0 : x1 + 1] = _unit_shape(shape, u[None, :], v[:, None])
    return out


def texture_cell(height: int, width: int) -> int:
    """Texture cell in pixels for an image size: ``max(1, min(H, W) // 32)`` (2 at 64x64)."""
    return max(1, min(height, width) // 32)


@functools.lru_cache(maxsize=64)
def texture_pattern(material: str, height: int, width: int) -> np.ndarray:
    """``bool [height, width]`` (read-only): where ``material`` shows the darker shade."""
    _check_choice("material", material, MATERIALS)
    c = texture_cell(height, width)
    gx = (np.arange(width) // c % 2 == 1)[None, :]
    gy = (np.arange(height) // c % 2 == 1)[:, None]
    if material == "paint":
        pattern = np.zeros((height, width), dtype=bool)
    elif material == "stripes":
        pattern = np.broadcast_to(gy, (height, width)).copy()
    elif material == "dots":
        pattern = gx & gy
    else:  # checkers
        pattern = gx ^ gy
    pattern.flags.writeable = False
    return pattern


def _background(spec: SceneSpec) -> np.ndarray:
    image = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[spec.background]
    if spec.background_noise:
        rng = np.random.default_rng(spec.noise_seed)
        noise = rng.integers(-spec.background_noise, spec.background_noise + 1, size=image.shape, dtype=np.int16)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return image


def _visible(silhouettes: np.ndarray) -> np.ndarray:
    """Visible masks ``[N, H, W]`` from silhouettes drawn back to front."""
    masks = np.empty_like(silhouettes)
    covered = np.zeros(silhouettes.shape[1:], dtype=bool)
    for i in range(len(silhouettes) - 1, -1, -1):
        masks[i] = silhouettes[i] & ~covered
        covered |= silhouettes[i]
    return masks


def _fractions(masks: np.ndarray, silhouettes: np.ndarray) -> tuple[float, ...]:
    n = len(masks)
    visible = np.count_nonzero(masks.reshape(n, masks[0].size if n else 0), axis=1)
    full = np.count_nonzero(silhouettes.reshape(n, masks[0].size if n else 0), axis=1)
    return tuple(float(v / f) if f else 0.0 for v, f in zip(visible, full))


def _silhouettes(spec: SceneSpec) -> np.ndarray:
    sil = np.zeros((len(spec.objects), spec.height, spec.width), dtype=bool)
    for i, obj in enumerate(spec.objects):
        sil[i] = shape_mask(obj.shape, obj.center, obj.size, spec.height, spec.width)
    return sil


def render(spec: SceneSpec) -> Scene:
    """Draws ``spec``: background, then each object back to front with its material's texture.

    Returns a :class:`Scene` with ``image [H, W, 3] uint8``, visible ``masks [N, H, W]`` and
    ``silhouettes [N, H, W]``. Pure: the same spec always gives the same arrays.
    """
    return _render(spec, _silhouettes(spec))


def _render(spec: SceneSpec, silhouettes: np.ndarray) -> Scene:
    masks = _visible(silhouettes)
    image = _background(spec)
    for obj, mask in zip(spec.objects, masks):
        base, shade = COLORS[obj.color]
        dark = texture_pattern(obj.material, spec.height, spec.width)
        image[mask & ~dark] = base
        image[mask & dark] = shade
    for array in (image, masks, silhouettes):
        array.flags.writeable = False
    return Scene(
        spec=spec,
        image=image,
        masks=masks,
        silhouettes=silhouettes,
        visible_fractions=_fractions(masks, silhouettes),
        caption=spec.caption,
    )


# ---------------------------------------------------------------------------------------------
# Random scenes


_RESTARTS = 20


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def random_scene(
    rng_or_seed: np.random.Generator | int,
    n_objects: int | None = None,
    size: int | tuple[int, int] = 64,
    *,
    min_visible: float = 0.6,
    size_range: tuple[float, float] = (0.15, 0.25),
    background_noise: int = 0,
    max_tries: int = 200,
) -> Scene:
    """A random scene of ``n_objects`` objects with distinct shapes (1-3 at random when None).

    Each object's half-extent is ``uniform(*size_range) * min(H, W)`` and it lies fully inside
    the frame. Objects are placed one after another; a placement that leaves any object (the new
    one or one it covers) with a visible fraction below ``min_visible`` is redrawn, up to
    ``max_tries`` times per object, after which the whole placement restarts (at most 20 times).

    Args:
        rng_or_seed: a ``numpy`` Generator (advanced in place) or a seed; same seed, same scene.
        size: ``64`` or ``(height, width)``.
        background_noise: amplitude of the background's light texture (0: flat).

    Raises:
        SyntheticError: impossible arguments, or no placement found (objects too large).
    """
    rng = _as_rng(rng_or_seed)
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    if not 1 <= n_objects <= len(SHAPES):
        raise SyntheticError(f"n_objects must be in [1, {len(SHAPES)}] (shapes are distinct), got {n_objects}")
    lo, hi = size_range
    if not 0 < lo <= hi < 0.5:
        raise SyntheticError(f"size_range must satisfy 0 < low <= high < 0.5 (fraction of the side), got {size_range}")
    if not 0 <= min_visible <= 1:
        raise SyntheticError(f"min_visible must be in [0, 1], got {min_visible}")

    shapes = rng.choice(len(SHAPES), size=n_objects, replace=False)
    colors = rng.integers(0, len(COLORS), size=n_objects)
    materials = rng.integers(0, len(MATERIALS), size=n_objects)
    color_names, background = list(COLORS), str(rng.choice(list(BACKGROUNDS)))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    side = min(height, width)

    for _restart in range(_RESTARTS):
        objects: list[SceneObject] = []
        sil = np.zeros((n_objects, height, width), dtype=bool)
        for k in range(n_objects):
            for _try in range(max_tries):
                half = float(rng.uniform(lo, hi) * side)
                center = (float(rng.uniform(half, width - 1 - half)), float(rng.uniform(half, height - 1 - half)))
                obj = SceneObject(
                    SHAPES[shapes[k]], color_names[colors[k]], MATERIALS[materials[k]], center, round(half, 3)
                )
                sil[k] = shape_mask(obj.shape, obj.center, obj.size, height, width)
                if min(_fractions(_visible(sil[: k + 1]), sil[: k + 1])) >= min_visible:
                    objects.append(obj)
                    break
            else:
                break
        if len(objects) == n_objects:
            spec = SceneSpec(height, width, tuple(objects), background, background_noise, noise_seed)
            return _render(spec, sil)
        logger.debug("restarting scene placement (object %d found no place)", len(objects))
    raise SyntheticError(
        f"could not place {n_objects} objects in {height}x{width} with min_visible={min_visible} after "
        f"{_RESTARTS} restarts; lower min_visible or size_range"
    )


# ---------------------------------------------------------------------------------------------
# Edits


@dataclass(frozen=True)
class ObjectEdit:
    """The edit of one scene object.

    Attributes:
        index: the object's position in ``scene.objects``.
        source: the object before the edit.
        target: the object after the edit (same centre and size; changed attributes only).
        source_phrase: its shape noun, e.g. ``"circle"``.
        target_phrase: the appendix-B phrase, e.g. ``"blue-colored circle"``.
    """

    index: int
    source: SceneObject
    target: SceneObject
    source_phrase: str
    target_phrase: str


@dataclass(frozen=True)
class SceneEdit:
    """One multi-object edit of a scene: every edited object gets its own target.

    Attributes:
        edit_type: the same for all edited objects (as in ALE-Bench).
        objects: the edited objects, in scene order.
    """

    edit_type: EditType
    objects: tuple[ObjectEdit, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(e.index for e in self.objects)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """``((source phrase, target phrase), ...)``."""
        return tuple((e.source_phrase, e.target_phrase) for e in self.objects)

    @property
    def edits(self) -> tuple[Edit, ...]:
        """The pairs as :class:`aledit.edits.Edit` with the type set explicitly."""
        return tuple(Edit(s, t, self.edit_type) for s, t in self.pairs)

    @property
    def source_prompt(self) -> str:
        """Source phrases joined with " and " (ALE's base prompt, appendix D)."""
        return join_phrases([e.source_phrase for e in self.objects])

    @property
    def target_prompt(self) -> str:
        return join_phrases([e.target_phrase for e in self.objects])


def _source_phrase(scene_objects: tuple[SceneObject, ...], index: int) -> str:
    shape = scene_objects[index].shape
    if sum(o.shape == shape for o in scene_objects) > 1:
        raise SyntheticError(
            f"object {index} is a {shape!r} but the scene holds several; source phrases are shape nouns, "
            "so edited objects need a shape no other object has"
        )
    return shape


def make_edit(scene: Scene | SceneSpec, edit_type: EditType | str, targets: dict[int, dict[str, str]]) -> SceneEdit:
    """Builds a :class:`SceneEdit` from explicit targets, e.g. ``{0: {"color": "blue"}}``.

    Each target must name exactly the attributes ``edit_type`` changes (:data:`EDITED_ATTRIBUTES`),
    each different from the object's own.
    """
    spec = scene.spec if isinstance(scene, Scene) else scene
    edit_type = EditType(edit_type)
    wanted = EDITED_ATTRIBUTES[edit_type]
    edits = []
    for index in sorted(targets):
        if not 0 <= index < len(spec.objects):
            raise SyntheticError(f"object index {index} out of range for a scene of {len(spec.objects)} objects")
        changes = dict(targets[index])
        if set(changes) != wanted:
            raise SyntheticError(
                f"a {edit_type.value} edit changes {sorted(wanted)}, but object {index} got {sorted(changes)}"
            )
        source = spec.objects[index]
        for attr, value in changes.items():
            if getattr(source, attr) == value:
                raise SyntheticError(
                    f"object {index}: target {attr} {value!r} equals the source's; an edit must change it"
                )
        target = dataclasses.replace(source, **changes)
        edits.append(
            ObjectEdit(
                index=index,
                source=source,
                target=target,
                source_phrase=_source_phrase(spec.objects, index),
                target_phrase=target_phrase(target, edit_type),
            )
        )
    if not edits:
        raise SyntheticError("an edit needs at least one target")
    new_shapes = [o.shape for o in apply_edit(spec, SceneEdit(edit_type, tuple(edits))).objects]
    if "shape" in wanted and len(set(new_shapes)) != len(new_shapes):
        raise SyntheticError(f"after the edit two objects would share a shape ({new_shapes}); pick other target shapes")
    return SceneEdit(edit_type, tuple(edits))


def _pick_targets(rng: np.random.Generator, sources: list[str], vocabulary, avoid: set[str]) -> tuple[str, ...]:
    """Distinct targets, each != its own source; prefers avoiding ``avoid``, then other sources."""
    order = [vocabulary[i] for i in rng.permutation(len(vocabulary))]
    for forbidden in (avoid | set(sources), set(sources), set()):
        pool = [v for v in order if v not in forbidden]
        for combo in itertools.permutations(pool, len(sources)):
            if all(t != s for t, s in zip(combo, sources)):
                return combo
    raise SyntheticError(f"cannot give {len(sources)} objects distinct targets out of {len(vocabulary)} values")


def random_edit(
    scene: Scene | SceneSpec,
    edit_type: EditType | str,
    rng_or_seed: np.random.Generator | int,
    n_edit: int | None = None,
    indices: tuple[int, ...] | None = None,
    *,
    min_visible: float = 0.5,
    max_tries: int = 100,
) -> SceneEdit:
    """A random edit of ``edit_type`` on ``n_edit`` objects (all when None) or on ``indices``.

    Target values per changed attribute:

    * always different from the object's own value and from every other edited object's target
      (so target-internal leakage is measurable);
    * colours and shapes also avoid every value present in the scene (so a target colour shows
      up nowhere before the edit, and shape nouns stay unique after it);
    * materials (only 4) avoid the other edited objects' source materials when possible, else
      only their own.

    Edits that change shapes are redrawn (up to ``max_tries``) until every object of the ideal
    edit keeps a visible fraction of at least ``min_visible``: a new shape may cover a neighbour.

    Raises:
        SyntheticError: no valid targets (e.g. more edited objects than values), or no draw kept
            every object visible enough.
    """
    spec = scene.spec if isinstance(scene, Scene) else scene
    rng = _as_rng(rng_or_seed)
    edit_type = EditType(edit_type)
    n = len(spec.objects)
    if indices is None:
        k = n if n_edit is None else n_edit
        if not 1 <= k <= n:
            raise SyntheticError(f"n_edit must be in [1, {n}] for this scene, got {n_edit}")
        indices = tuple(sorted(int(i) for i in rng.choice(n, size=k, replace=False)))
    sources = [spec.objects[i] for i in indices]
    vocab = {"color": list(COLORS), "shape": list(SHAPES), "material": list(MATERIALS)}
    changed = EDITED_ATTRIBUTES[edit_type]
    for _try in range(max_tries):
        targets: dict[int, dict[str, str]] = {i: {} for i in indices}
        for attr in sorted(changed):
            in_scene = {getattr(o, attr) for o in spec.objects} if attr != "material" else set()
            picked = _pick_targets(rng, [getattr(o, attr) for o in sources], vocab[attr], in_scene)
            for i, value in zip(indices, picked):
                targets[i][attr] = value
        edit = make_edit(spec, edit_type, targets)
        if "shape" not in changed:
            return edit
        sil = _silhouettes(apply_edit(spec, edit))
        if min(_fractions(_visible(sil), sil)) >= min_visible:
            return edit
    raise SyntheticError(
        f"no {edit_type.value} edit of objects {indices} keeps every object at least {min_visible} visible "
        f"after {max_tries} draws; lower min_visible or edit another scene"
    )


def apply_edit(spec: SceneSpec, edit: SceneEdit) -> SceneSpec:
    """The scene spec after the edit: edited objects replaced by their targets, all else equal."""
    objects = list(spec.objects)
    for e in edit.objects:
        if objects[e.index] != e.source:
            raise SyntheticError(
                f"edit of object {e.index} was made for {e.source}, but the scene holds {objects[e.index]}"
            )
        objects[e.index] = e.target
    return dataclasses.replace(spec, objects=tuple(objects))


def render_edit(scene: Scene | SceneSpec, edit: SceneEdit) -> Scene:
    """The ideal edited scene (ground truth): the same spec with the edited objects' attributes
    replaced, rendered with the same positions, drawing order, background and noise.

    Pixels outside the edited objects' source and target silhouettes are identical to the
    source image. A changed shape may hide or reveal parts of other objects; its new
    visibility is in the returned scene's ``visible_fractions`` (no rejection happens here).
    """
    spec = scene.spec if isinstance(scene, Scene) else scene
    return render(apply_edit(spec, edit))
