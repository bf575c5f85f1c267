"""The ALE-Bench generator: object lists + attribute dictionaries -> edits (paper 4.1, appendix B).

For every image, every edit type and every object count ``n`` in ``1..max_objects``, the
generator draws ``instances`` distinct random edits (paper: 10, so 20 images give
``20 x 5 x 3 x 10 = 3,000`` edits). An edit picks ``n`` distinct objects of the image and fills
the type's template for each from that object's attribute dictionary:

==================  ==================================  =====================================
type                template                            needs
==================  ==================================  =====================================
color               ``{color}-colored {object}``        colors
object              ``{new object}``                    new objects
material            ``{object} made of {material}``     materials
color+object        ``{color}-colored {new object}``    colors, new objects
object+material     ``{new object} made of {material}`` new objects, materials
==================  ==================================  =====================================

``{object}`` is the object's *noun*: its name unless given ("globe" for the source object "blue
globe", as in the published ALE-Bench). The draw is deterministic: each (image, type, count)
cell has its own random stream derived from ``seed``, so adding an image changes no other
image's edits. Impossible cells are never produced: an image with fewer eligible objects than
``n`` gets no ``n``-object edits of that type, and a cell whose attribute space holds fewer than
``instances`` distinct edits gets all of them (both logged as warnings).

The objects file (``objects.json``)::

    {"colors": ["red", "blue"],                 optional: every object's default colors
     "materials": ["gold", "wood"],             optional: every object's default materials
     "images": {"natural_img01": [
         {"name": "blue globe", "noun": "globe", "new_objects": ["ball", "lamp"]},
         {"name": "box", "colors": ["green"], "new_objects": ["chest"], "materials": []}]}}

An object's own ``colors`` / ``materials`` replace the defaults (an empty list: none).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..edits import EditType
from .dataset import ALE_BENCH_SEED, BenchEdit, BenchFormatError, Benchmark

__all__ = [
    "ATTRIBUTES_BY_TYPE",
    "TEMPLATES",
    "ImageObjects",
    "ObjectSpec",
    "derive_object_lists",
    "expected_counts",
    "generate_edits",
    "read_objects_json",
    "render_target",
    "write_objects_json",
]

logger = logging.getLogger(__name__)

TEMPLATES: dict[EditType, str] = {
    EditType.COLOR: "{color}-colored {object}",
    EditType.OBJECT: "{new_object}",
    EditType.MATERIAL: "{object} made of {material}",
    EditType.COLOR_OBJECT: "{color}-colored {new_object}",
    EditType.OBJECT_MATERIAL: "{new_object} made of {material}",
}
# The attribute lists each template draws from, in the order they are drawn.
ATTRIBUTES_BY_TYPE: dict[EditType, tuple[str, ...]] = {
    EditType.COLOR: ("colors",),
    EditType.OBJECT: ("new_objects",),
    EditType.MATERIAL: ("materials",),
    EditType.COLOR_OBJECT: ("colors", "new_objects"),
    EditType.OBJECT_MATERIAL: ("new_objects", "materials"),
}
_SLOT = {"colors": "color", "new_objects": "new_object", "materials": "material"}


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def _words(values: Iterable[str], where: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise BenchFormatError(f"{where} must be a list of strings, got the string {values!r}")
    out: list[str] = []
    for v in values:
        v = _norm(v)
        if not v:
            raise BenchFormatError(f"{where} contains an empty entry")
        if v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class ObjectSpec:
    """A source object of an image and what it may become.

    Attributes:
        name: the source phrase (also the mask's name, ``<name>_mask.png``).
        noun: the phrase the color and material templates use; defaults to ``name``.
        colors, new_objects, materials: the attribute dictionary of this object.
    """

    name: str
    noun: str = ""
    colors: tuple[str, ...] = ()
    new_objects: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = _norm(self.name)
        if not name:
            raise BenchFormatError("an object has an empty name")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "noun", _norm(self.noun) or name)
        for attr in ("colors", "new_objects", "materials"):
            object.__setattr__(self, attr, _words(getattr(self, attr), f"{attr} of object {name!r}"))

    def choices(self, edit_type: EditType) -> int:
        """How many distinct targets this object has for ``edit_type`` (0: not eligible)."""
        return math.prod(len(getattr(self, a)) for a in ATTRIBUTES_BY_TYPE[edit_type])

    def to_json(self) -> dict:
        record = {"name": self.name}
        if self.noun != self.name:
            record["noun"] = self.noun
        record.update(colors=list(self.colors), new_objects=list(self.new_objects), materials=list(self.materials))
        return record


@dataclass(frozen=True)
class ImageObjects:
    """The editable objects of one image.

    Attributes:
        image: the image's name (file stem under ``images/``).
        objects: its source objects, names unique.
    """

    image: str
    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        names = [o.name.lower() for o in self.objects]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise BenchFormatError(f"image {self.image!r} lists the object {dup!r} twice")


def render_target(obj: ObjectSpec, edit_type: EditType, values: Sequence[str]) -> str:
    """Fills the template of ``edit_type`` for ``obj`` with ``values`` (one per attribute of
    :data:`ATTRIBUTES_BY_TYPE`), e.g. ``render_target(car, COLOR, ["red"]) == "red-colored car"``."""
    slots = {_SLOT[a]: v for a, v in zip(ATTRIBUTES_BY_TYPE[edit_type], values)}
    return TEMPLATES[edit_type].format(object=obj.noun, **slots)


def _cell_rng(seed: int, image: str, edit_type: EditType, count: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{image}\0{edit_type.value}\0{count}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _space(eligible: Sequence[ObjectSpec], edit_type: EditType, count: int) -> int:
    return sum(math.prod(o.choices(edit_type) for o in group) for group in itertools.combinations(eligible, count))


def _draw(obj: ObjectSpec, edit_type: EditType, rng: random.Random) -> str:
    return render_target(obj, edit_type, [rng.choice(getattr(obj, a)) for a in ATTRIBUTES_BY_TYPE[edit_type]])


def _all_instances(eligible, edit_type, count):
    for group in itertools.combinations(eligible, count):
        options = [
            [
                render_target(o, edit_type, vals)
                for vals in itertools.product(*(getattr(o, a) for a in ATTRIBUTES_BY_TYPE[edit_type]))
            ]
            for o in group
        ]
        for targets in itertools.product(*options):
            yield tuple((o.name, t) for o, t in zip(group, targets))


def _cell(
    spec: ImageObjects, edit_type: EditType, count: int, instances: int, seed: int
) -> list[tuple[tuple[str, str], ...]]:
    """``instances`` distinct edits (as pair tuples) of one (image, type, count) cell."""
    eligible = [o for o in spec.objects if o.choices(edit_type) > 0]
    if len(eligible) < count:
        logger.warning(
            "image %r: %d object(s) can take %s edits, so it gets no %d-object %s edits",
            spec.image,
            len(eligible),
            edit_type.value,
            count,
            edit_type.value,
        )
        return []
    rng = _cell_rng(seed, spec.image, edit_type, count)
    space = _space(eligible, edit_type, count)
    wanted = min(instances, space)
    if space < instances:
        logger.warning(
            "image %r: only %d distinct %d-object %s edits exist (asked for %d); add attributes to get more",
            spec.image,
            space,
            count,
            edit_type.value,
            instances,
        )
    if space <= 4 * wanted:  # small space: enumerate, then sample without replacement
        chosen = rng.sample(list(_all_instances(eligible, edit_type, count)), wanted)
        out = []
        for pairs in chosen:
            pairs = list(pairs)
            rng.shuffle(pairs)
            out.append(tuple(pairs))
        return out
    out, seen = [], set()
    while len(out) < wanted:  # large space (> 4x wanted): draw, drop repeats
        pairs = tuple((o.name, _draw(o, edit_type, rng)) for o in rng.sample(eligible, count))
        key = frozenset(pairs)
        if key not in seen:
            seen.add(key)
            out.append(pairs)
    return out


def generate_edits(
    images: Sequence[ImageObjects],
    instances: int = 10,
    max_objects: int = 3,
    seed: int = 0,
    edit_seed: int = ALE_BENCH_SEED,
    types: Sequence[EditType] = tuple(EditType),
) -> list[BenchEdit]:
    """Draws the benchmark's edits: ``instances`` per (image, type, object count).

    Args:
        images: the object lists and attribute dictionaries, one entry per image.
        instances: distinct edits per cell (paper: 10).
        max_objects: object counts ``1..max_objects`` (paper: 3).
        seed: the generator's seed; the same inputs and seed give the same edits.
        edit_seed: the noise seed written into every edit (the ALE authors used 42).
        types: the edit types to draw.

    Returns:
        Edits in (object count, type, image, index) order with ids ``<image>-<n>-<type>-<index>``.
    """
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    names = [s.image for s in images]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"image {dup!r} is listed twice")
    edits = []
    for count in range(1, max_objects + 1):
        for edit_type in (EditType(t) for t in types):
            for spec in images:
                for index, pairs in enumerate(_cell(spec, edit_type, count, instances, seed)):
                    edits.append(
                        BenchEdit(
                            f"{spec.image}-{count}-{edit_type.value}-{index}", spec.image, pairs, edit_type, edit_seed
                        )
                    )
    return edits


def expected_counts(
    images: Sequence[ImageObjects],
    instances: int = 10,
    max_objects: int = 3,
    types: Sequence[EditType] = tuple(EditType),
) -> dict[tuple[str, EditType, int], int]:
    """``{(image, type, count): number of edits generate_edits produces}`` (cells with 0 left out)."""
    out = {}
    for spec in images:
        for edit_type in map(EditType, types):
            eligible = [o for o in spec.objects if o.choices(edit_type) > 0]
            for count in range(1, min(max_objects, len(eligible)) + 1):
                out[(spec.image, edit_type, count)] = min(instances, _space(eligible, edit_type, count))
    return out


# -- object lists from a published benchmark -------------------------------------------------

_COLORED = re.compile(r"^(?P<color>\S+)-colored (?P<rest>.+)$")
_MADE_OF = re.compile(r"^(?P<rest>.+?) made of (?P<material>.+)$")


def _parse_target(edit: BenchEdit, source: str, target: str) -> dict[str, str]:
    """The template slots of one target, e.g. ``{"color": "red", "object": "car"}``."""
    t = edit.edit_type
    m = None
    if t in (EditType.COLOR, EditType.COLOR_OBJECT):
        m = _COLORED.match(target)
        if m:
            key = "object" if t is EditType.COLOR else "new_object"
            return {"color": m.group("color"), key: m.group("rest")}
    elif t in (EditType.MATERIAL, EditType.OBJECT_MATERIAL):
        m = _MADE_OF.match(target)
        if m:
            key = "object" if t is EditType.MATERIAL else "new_object"
            return {"material": m.group("material"), key: m.group("rest")}
    else:
        return {"new_object": target}
    raise BenchFormatError(
        f"edit {edit.id!r}: target {target!r} of {source!r} does not follow the {t.value} template {TEMPLATES[t]!r}"
    )


def derive_object_lists(bench: Benchmark | Sequence[BenchEdit]) -> list[ImageObjects]:
    """Per-image object lists and attribute dictionaries read back from a benchmark's edits.

    Each source object gets every color, new object and material its targets use, in order of
    first use, and the noun its color / material targets use ("globe" for "blue globe"). With
    these lists :func:`generate_edits` reproduces the benchmark's structure (same number of
    edits per image, type and object count).
    """
    edits = bench.edits if isinstance(bench, Benchmark) else bench
    found: dict[str, dict[str, dict]] = {}
    for edit in edits:
        objects = found.setdefault(edit.image, {})
        for source, target in edit.pairs:
            slots = _parse_target(edit, source, target)
            entry = objects.setdefault(source, {"noun": None, "colors": [], "new_objects": [], "materials": []})
            if "object" in slots:
                if entry["noun"] is None:
                    entry["noun"] = slots["object"]
                elif entry["noun"] != slots["object"]:
                    logger.warning(
                        "object %r of %r is called both %r and %r in targets; keeping %r",
                        source,
                        edit.image,
                        entry["noun"],
                        slots["object"],
                        entry["noun"],
                    )
            for slot, attr in (("color", "colors"), ("new_object", "new_objects"), ("material", "materials")):
                if slot in slots and slots[slot] not in entry[attr]:
                    entry[attr].append(slots[slot])
    return [
        ImageObjects(
            image,
            tuple(
                ObjectSpec(
                    name,
                    entry["noun"] or "",
                    tuple(entry["colors"]),
                    tuple(entry["new_objects"]),
                    tuple(entry["materials"]),
                )
                for name, entry in sorted(objects.items())
            ),
        )
        for image, objects in sorted(found.items())
    ]


# -- objects.json ----------------------------------------------------------------------------


def read_objects_json(path: str | os.PathLike) -> list[ImageObjects]:
    """Reads an objects file (format in the module docstring)."""
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise BenchFormatError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), Mapping) or not data["images"]:
        raise BenchFormatError(f'{where}: expected {{"images": {{IMAGE: [objects...]}}}} with at least one image')
    defaults = {a: _words(data.get(a, ()), f"{where}: top-level {a!r}") for a in ("colors", "materials", "new_objects")}
    images = []
    for image, objects in data["images"].items():
        if not isinstance(objects, list) or not objects:
            raise BenchFormatError(f"{where}: image {image!r} needs a non-empty list of objects")
        specs = []
        for i, obj in enumerate(objects):
            if isinstance(obj, str):
                obj = {"name": obj}
            if not isinstance(obj, Mapping) or "name" not in obj:
                raise BenchFormatError(f'{where}: image {image!r}, object {i}: expected a name or {{"name": ...}}')
            unknown = set(obj) - {"name", "noun", "colors", "new_objects", "materials"}
            if unknown:
                raise BenchFormatError(
                    f"{where}: image {image!r}, object {obj['name']!r}: unknown key(s) {', '.join(sorted(unknown))} "
                    "(allowed: name, noun, colors, new_objects, materials)"
                )
            specs.append(
                ObjectSpec(
                    obj["name"],
                    obj.get("noun", ""),
                    obj.get("colors", defaults["colors"]),
                    obj.get("new_objects", defaults["new_objects"]),
                    obj.get("materials", defaults["materials"]),
                )
            )
        images.append(ImageObjects(str(image), tuple(specs)))
    return images


def write_objects_json(images: Sequence[ImageObjects], path: str | os.PathLike) -> None:
    """Writes the object lists with every attribute spelled out per object."""
    data = {"images": {s.image: [o.to_json() for o in s.objects] for s in images}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
