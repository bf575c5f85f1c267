"""Edit specifications: what to change into what, and how much structure to keep.

An :class:`Edit` names one source object (a phrase that appears in the source image) and the
phrase it should become. Its :class:`EditType` follows the templates of ALE-Bench (paper, appendix
B) and selects the self-attention control schedule of appendix D.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "Edit",
    "EditError",
    "EditType",
    "SELF_REPLACE_BY_TYPE",
    "infer_edit_type",
    "parse_edit",
    "self_replace_for",
]


class EditError(ValueError):
    """An edit that cannot be understood (malformed text, empty phrase, duplicates)."""


class EditType(str, enum.Enum):
    COLOR = "color"
    OBJECT = "object"
    MATERIAL = "material"
    COLOR_OBJECT = "color+object"
    OBJECT_MATERIAL = "object+material"


# Appendix D: fraction of the denoising steps during which the target branch takes the source
# branch's self-attention. Higher keeps more of the source's structure.
SELF_REPLACE_BY_TYPE: dict[EditType, float] = {
    EditType.COLOR: 1.0,
    EditType.OBJECT: 0.5,
    EditType.MATERIAL: 0.6,
    EditType.COLOR_OBJECT: 0.5,
    EditType.OBJECT_MATERIAL: 0.5,
}

_COLORED = re.compile(r"^(?P<color>\S+)-colou?red\s+(?P<object>.+)$", re.IGNORECASE)
_MADE_OF = re.compile(r"^(?P<object>.+?)\s+made\s+of\s+(?P<material>.+)$", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def infer_edit_type(source: str, target: str) -> EditType:
    """Infers the edit type from ALE-Bench's templates (appendix B).

    "{color}-colored {object}" -> color, "{object} made of {material}" -> material,
    "{color}-colored {new object}" -> color+object, "{new object} made of {material}" ->
    object+material, anything else -> object.
    """
    src, tgt = _norm(source), _norm(target)
    obj, has_color, has_material = tgt, False, False
    m = _MADE_OF.match(obj)
    if m:
        obj, has_material = _norm(m.group("object")), True
    m = _COLORED.match(obj)
    if m:
        obj, has_color = _norm(m.group("object")), True
    same_object = obj == src
    if has_material:
        # "silver-colored car made of gold" is outside the paper's templates; the material wins.
        return EditType.MATERIAL if same_object and not has_color else EditType.OBJECT_MATERIAL
    if has_color:
        return EditType.COLOR if same_object else EditType.COLOR_OBJECT
    return EditType.OBJECT


@dataclass(frozen=True)
class Edit:
    """One object edit, e.g. ``Edit("wolf", "pink-colored wolf")``.

    Attributes:
        source: phrase naming the object in the source image (also the mask's name).
        target: phrase describing what the object should become.
        edit_type: explicit type; ``None`` infers it from the templates.
    """

    source: str
    target: str
    edit_type: EditType | None = None

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EditError(f"edit {name} phrase is empty: {value!r}")
            object.__setattr__(self, name, " ".join(value.split()))
        if self.edit_type is not None and not isinstance(self.edit_type, EditType):
            try:
                object.__setattr__(self, "edit_type", EditType(self.edit_type))
            except ValueError:
                choices = ", ".join(t.value for t in EditType)
                raise EditError(f"unknown edit type {self.edit_type!r}; choose one of {choices}") from None

    @property
    def resolved_type(self) -> EditType:
        return self.edit_type if self.edit_type is not None else infer_edit_type(self.source, self.target)


def parse_edit(text: str) -> Edit:
    """Parses ``"wolf -> pink-colored wolf"`` (optionally ``"... : color"`` to force the type)."""
    if not isinstance(text, str) or text.count("->") != 1:
        raise EditError(f"malformed edit {text!r}: expected 'SOURCE -> TARGET', e.g. 'wolf -> pink-colored wolf'")
    source, target = (part.strip() for part in text.split("->"))
    edit_type = None
    if " : " in target:
        target, edit_type = (part.strip() for part in target.rsplit(" : ", 1))
    if not source or not target:
        raise EditError(f"malformed edit {text!r}: both sides of '->' need a phrase")
    return Edit(source, target, edit_type)


def self_replace_for(edits: list[Edit] | tuple[Edit, ...]) -> float:
    """The self-attention schedule for a call with several edits.

    One schedule serves the whole image, so the edit needing the most freedom wins (the
    minimum): keeping the source's self-attention longer would stop an object change.
    """
    if not edits:
        raise EditError("no edits given")
    return min(SELF_REPLACE_BY_TYPE[e.resolved_type] for e in edits)
