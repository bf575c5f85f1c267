"""What the web app does, as plain functions of plain values: no Gradio here, so all of it is
tested without a browser (``tests/test_ui.py``) and :mod:`aledit.ui.app` only wires components
to these functions.

Values crossing the page: edits are ``"source -> target"`` strings (one per object row); a mask
is the image editor's value (``{"background", "layers", "composite"}``, RGBA ``uint8`` arrays):
an object's mask is the union of the painted (alpha > 0) pixels of its layers; method options
are ``[[option, value text], ...]`` rows of the options table.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..commands import UsageError, first_line
from ..edits import Edit, EditError, EditType, parse_edit
from ..masks.ops import MaskError
from ..methods.registry import MethodError, available_methods, describe_option, make_config, method_info, parse_options
from ..prompts import PromptError
from ..synthetic.demo import DEMO_KEYS
from ..synthetic.model import ABLATION_SWITCHES, SyntheticEditSettings
from ..synthetic.scenes import (
    EDITED_ATTRIBUTES,
    TARGET_TEMPLATES,
    Scene,
    SceneEdit,
    SyntheticError,
    make_edit,
    random_edit,
    random_scene,
    render_edit,
)
from ..visualize import PALETTE, mask_overlay, side_by_side

__all__ = [
    "MAX_OBJECTS",
    "NAIVE",
    "USER_ERRORS",
    "EditResults",
    "MethodResult",
    "attention_overlay",
    "check_settings",
    "display_image",
    "editor_value",
    "mask_preview",
    "masks_for_edit",
    "method_choices",
    "new_scene",
    "object_mask",
    "one_line",
    "option_rows",
    "options_from_rows",
    "painted_mask",
    "parse_rows",
    "resolve_method",
    "run_methods",
    "scene_edit_for",
    "score_rows",
    "SCORE_COLUMNS",
    "upload_mask",
]

logger = logging.getLogger("aledit")

MAX_OBJECTS = 4  # object rows the page offers (add / remove shows and hides them)
NAIVE = "naive"  # ALE's two-branch edit with ORE, RGB-CAM and Background Blending off
DISPLAY_SIDE = 256  # images smaller than this are shown (and painted on) enlarged, pixels kept sharp

# Mistakes of the user: shown in the page as their one line, never as a stack trace.
USER_ERRORS = (UsageError, EditError, MaskError, MethodError, PromptError, SyntheticError)

# The exact scores of a synthetic scene, in the demo's columns: (EditScores key, column title).
SCORE_COLUMNS = DEMO_KEYS


# ---------------------------------------------------------------------------------------------
# Edits and settings


def parse_rows(texts: Sequence[str | None]) -> list[Edit]:
    """The edits of the visible object rows; blank rows are skipped. :class:`UsageError` with the
    CLI's messages for a malformed row, a repeated object or no edit at all."""
    edits = []
    for text in texts:
        if text is None or not text.strip():
            continue
        try:
            edits.append(parse_edit(text.strip()))
        except EditError as exc:
            raise UsageError(str(exc)) from None
    if not edits:
        raise UsageError("no edits given: add an edit 'SOURCE -> TARGET', e.g. 'wolf -> pink-colored wolf'")
    sources = [e.source for e in edits]
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise UsageError(f"object {repeated[0]!r} is edited twice; give each object one edit")
    return edits


def check_settings(steps, size, seed) -> tuple[int | None, int | None, int]:
    """``(steps, size, seed)`` as integers (``None``: the method's default), checked as the CLI
    checks ``--steps`` and ``--size``."""

    def integer(value, name):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise UsageError(f"--{name} must be an integer, got {value}")
        return int(number)

    steps, size, seed = integer(steps, "steps"), integer(size, "size"), integer(seed, "seed") or 0
    if size is not None and (size <= 0 or size % 8):
        raise UsageError(f"--size must be a positive multiple of 8, got {size}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    return steps, size, seed


# ---------------------------------------------------------------------------------------------
# Methods and their options


def method_choices() -> tuple[str, ...]:
    """Every registered method, then ``naive`` (ALE with its three parts off)."""
    return (*available_methods(), NAIVE)


def resolve_method(name: str) -> tuple[str, dict]:
    """``(registered method, fixed options)`` of a choice of :func:`method_choices`."""
    if name == NAIVE:
        return "ale", dict(ABLATION_SWITCHES["naive"])
    method_info(name)  # MethodError for an unknown name
    return name, {}


def _base_options(name: str, settings: SyntheticEditSettings | None) -> dict:
    """Options every run of ``name`` starts from: the fixed ones of the choice, plus the
    settings ``synthetic-tiny`` needs (eta 0, its guidance) when given."""
    method, fixed = resolve_method(name)
    base = settings.options(method) if settings is not None else {}
    return {**base, **fixed}


def option_rows(name: str, settings: SyntheticEditSettings | None = None) -> list[list[str]]:
    """``[[option, default as text], ...]``: the options table of ``name`` (``settings``: the
    synthetic model's defaults, shown as the defaults)."""
    method, _ = resolve_method(name)
    defaults = {**method_info(method).defaults(), **_base_options(name, settings)}
    return [[key, describe_option(value)] for key, value in defaults.items()]


def options_from_rows(name: str, rows, settings: SyntheticEditSettings | None = None) -> tuple[str, dict]:
    """``(method, typed options)`` from the options table: rows whose text differs from the
    default are parsed with the CLI's ``--option KEY=VALUE`` parser and checked against the
    method's config (:class:`UsageError` with the CLI's message)."""
    method, _ = resolve_method(name)
    defaults = dict((k, v) for k, v in option_rows(name, settings))
    changed = []
    for row in rows if rows is not None else []:
        if len(row) < 2 or row[0] in (None, ""):
            continue
        key, text = str(row[0]).strip(), "" if row[1] is None else str(row[1]).strip()
        if defaults.get(key) != text:
            changed.append(f"{key}={text}")
    try:
        options = {**_base_options(name, settings), **parse_options(method, changed)}
        make_config(method, options)
    except MethodError as exc:
        raise UsageError(str(exc)) from None
    return method, options


# ---------------------------------------------------------------------------------------------
# Images and masks


def display_image(image: Image.Image) -> Image.Image:
    """``image`` enlarged by a whole factor (nearest) until its shorter side is at least
    :data:`DISPLAY_SIDE`, so a 64-pixel scene can be painted on; larger images unchanged."""
    factor = max(1, math.ceil(DISPLAY_SIDE / max(1, min(image.size))))
    image = image.convert("RGB")
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def mask_preview(image: Image.Image, mask: np.ndarray | None, index: int = 0, alpha: float = 0.5) -> Image.Image:
    """``image`` shown enlarged (:func:`display_image`) with ``mask`` (any size, non-zero =
    object) blended in object ``index``'s colour: the preview of a found or uploaded mask."""
    background = display_image(image)
    if mask is None:
        return background
    selected = _resized(mask, background.size)
    pixels = np.asarray(background, np.float32).copy()
    pixels[selected] = (1 - alpha) * pixels[selected] + alpha * np.array(PALETTE[index % len(PALETTE)], np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``bool [H, W]`` of ``mask`` (non-zero = object) resized to ``size`` ``(width, height)``."""
    picture = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    return np.asarray(picture.resize(size, Image.NEAREST)) > 127


def editor_value(image: Image.Image | None, mask: np.ndarray | None = None, index: int = 0) -> dict | None:
    """The image editor's value: ``image`` (enlarged) with ``mask``'s preview as the background
    to paint on, no painted layer yet."""
    if image is None:
        return None
    background = mask_preview(image, mask, index)
    return {"background": np.asarray(background.convert("RGBA")), "layers": [], "composite": None}


def painted_mask(value) -> np.ndarray | None:
    """``bool [H, W]``: the pixels painted (alpha > 0) on any layer of an image editor value;
    ``None`` when nothing is painted."""
    if not value:
        return None
    layers = [np.asarray(layer) for layer in (value.get("layers") or []) if layer is not None]
    masks = [layer[..., 3] > 0 for layer in layers if layer.ndim == 3 and layer.shape[2] == 4]
    masks = [m for m in masks if m.any()]
    if not masks:
        return None
    shape = masks[0].shape
    return np.logical_or.reduce([m if m.shape == shape else _resized(m, shape[::-1]) for m in masks])


def object_mask(given: np.ndarray | None, value) -> np.ndarray | None:
    """An object's mask: the given one (found or uploaded, any size) joined with what was
    painted over it (at the editor's size); ``None`` when there is neither."""
    painted = painted_mask(value)
    if given is None:
        return painted
    given = np.asarray(given) > 0
    if painted is None:
        return given
    return _resized(given, painted.shape[::-1]) | painted


def upload_mask(picture) -> np.ndarray:
    """``bool [H, W]`` of an uploaded mask picture: non-zero (non-black, non-transparent) pixels."""
    array = np.asarray(picture)
    if array.ndim == 3 and array.shape[2] == 4:
        return (array[..., 3] > 0) & (array[..., :3].max(axis=2) > 0)
    if array.ndim == 3:
        return array.max(axis=2) > 0
    return array > 0


def masks_for_edit(edits: Sequence[Edit], givens: Sequence, editor_values: Sequence, masks_required: bool) -> dict | None:
    """``{source: bool [H, W]}`` for ``pipe.edit``, or ``None`` where there is no mask at all and
    the method finds its regions itself. Where any object has a mask (or the method requires
    them), every object gets its entry, one without any an empty mask, so the pipeline reports
    it with the CLI's "mask for 'x' is empty" line."""
    masks = {e.source: object_mask(g, v) for e, g, v in zip(edits, givens, editor_values)}
    if all(m is None for m in masks.values()) and not masks_required:
        return None
    return {e.source: masks[e.source] if masks[e.source] is not None else np.zeros((8, 8), bool) for e in edits}


def attention_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """A word's cross-attention map ``[h, w]`` (in [0, 1]) over ``image`` (shown enlarged):
    dark where the word does not attend, bright red-yellow where it does."""
    base = display_image(image)
    amap = np.asarray(attention, np.float32)
    top = float(amap.max())
    amap = amap / top if top > 0 else amap
    heat = np.asarray(Image.fromarray((amap * 255).astype(np.uint8)).resize(base.size, Image.BILINEAR), np.float32) / 255
    colour = np.stack([np.clip(2 * heat, 0, 1), np.clip(2 * heat - 1, 0, 1), np.zeros_like(heat)], axis=2) * 255
    pixels = np.asarray(base, np.float32)
    out = (1 - alpha) * pixels * (0.3 + 0.7 * heat[..., None]) + alpha * colour
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Synthetic scenes


def new_scene(seed: int, n_objects: int, edit_type: str, n_edit: int = 2, size: int = 64) -> tuple[Scene, SceneEdit]:
    """A random scene of ``n_objects`` and a random ``edit_type`` edit of ``n_edit`` of them
    (as :func:`aledit.synthetic.random_scene` / ``random_edit``, seeded by ``seed``)."""
    try:
        edit_type = EditType(edit_type)
    except ValueError:
        raise UsageError(f"unknown edit type {edit_type!r}; choose one of {', '.join(t.value for t in EditType)}") from None
    rng = np.random.default_rng(int(seed))
    scene = random_scene(rng, int(n_objects), size)
    edit = random_edit(scene, edit_type, rng, n_edit=min(int(n_edit), int(n_objects)))
    return scene, edit


_FIELD = {"color": r"(?P<color>[a-z]+)", "shape": r"(?P<shape>[a-z]+)", "material": r"(?P<material>[a-z]+)"}


def scene_edit_for(scene: Scene | None, edits: Sequence[Edit]) -> SceneEdit | None:
    """The :class:`SceneEdit` the typed edits describe on ``scene`` (so they can be scored
    exactly), or ``None`` when they are not edits of its objects in ALE-Bench's templates (one
    edit type for all, as in the synthetic bench)."""
    if scene is None or not edits:
        return None
    types = {e.resolved_type for e in edits}
    if len(types) != 1:
        return None
    edit_type = types.pop()
    pattern = re.compile("^" + TARGET_TEMPLATES[edit_type].format(**_FIELD) + "$")
    shapes = [o.shape for o in scene.objects]
    targets = {}
    for e in edits:
        if shapes.count(e.source) != 1:
            return None
        index = shapes.index(e.source)
        found = pattern.match(" ".join(e.target.split()))
        if found is None:
            return None
        values = found.groupdict()
        if "shape" not in EDITED_ATTRIBUTES[edit_type] and values.get("shape", e.source) != e.source:
            return None
        targets[index] = {k: v for k, v in values.items() if k in EDITED_ATTRIBUTES[edit_type]}
    try:
        scene_edit = make_edit(scene, edit_type, targets)
    except SyntheticError:
        return None
    given = {e.source: " ".join(e.target.split()) for e in edits}
    if any(given[o.source_phrase] != o.target_phrase for o in scene_edit.objects):
        return None
    return scene_edit


# ---------------------------------------------------------------------------------------------
# Running edits


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One method's edit. ``picture``: source | masks | result; ``attention``: ``[(overlay,
    label), ...]`` per object; ``scores``: exact scores (synthetic scenes) as a dict or ``None``."""

    name: str
    image: Image.Image
    picture: Image.Image
    attention: list
    scores: dict | None
    seconds: float


@dataclass(frozen=True, eq=False)
class EditResults:
    """Everything one press of "Edit" made. ``sheet``: source | masks | result, one row per
    method; ``files``: the sheet and each result as PNGs, for download."""

    results: list[MethodResult]
    scene_edit: SceneEdit | None
    sheet: Image.Image
    files: list[str]

    def attention_gallery(self) -> list[tuple[Image.Image, str]]:
        return [item for r in self.results for item in r.attention]

    def summary(self, seed: int) -> str:
        times = ", ".join(f"{r.name} {r.seconds:.1f} s" for r in self.results)
        if self.scene_edit is not None:
            note = "exact scores below (synthetic scene, known masks and ideal edit)"
        else:
            note = "no exact scores: they need a generated scene and its edits in the scene's templates"
        return f"Done (seed {seed}): {times}. {note}."


def score_rows(results: Sequence[MethodResult]) -> list[list]:
    """``[[method, score, ...], ...]`` in :data:`SCORE_COLUMNS` order, three decimals, "n/a"
    where a score does not apply (e.g. TI leakage with one edited object)."""
    rows = []
    for r in results:
        if r.scores is not None:
            values = [float(r.scores[k]) for k, _ in SCORE_COLUMNS]
            rows.append([r.name, *("n/a" if math.isnan(v) else f"{v:.3f}" for v in values)])
    return rows


def run_methods(
    pipe,
    image: Image.Image,
    edits: Sequence[Edit],
    givens: Sequence,
    editor_values: Sequence,
    choices: Sequence[str],
    option_tables: dict,
    *,
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    scene: Scene | None = None,
    settings: SyntheticEditSettings | None = None,
    out_dir: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> EditResults:
    """Runs each method of ``choices`` on the same image, edits, masks and seed.

    Everything the user typed is checked first (options of every chosen method, masks), then
    each method edits; one PNG per method plus the side-by-side comparison are written to
    ``out_dir`` (a new temporary folder by default) for download.

    Args:
        givens, editor_values: per edit, its found or uploaded mask (or None) and its editor's
            value (painted strokes); see :func:`object_mask`.
        option_tables: ``{choice: options table rows}`` (missing: the defaults).
        scene: the generated synthetic scene the image shows, if any (enables exact scores).
        settings: ``synthetic-tiny``'s settings (its defaults for eta and guidance), or None.
        progress: called as ``progress(fraction, text)`` after every denoising step.
    """
    from ..masks.ops import ObjectMasks
    from ..methods.base import MASKS_REQUIRED, MASKS_UNUSED
    from ..synthetic.metrics import score_edit

    if image is None:
        raise UsageError("no image: upload one or generate a synthetic scene")
    if not choices:
        raise UsageError("no method chosen: tick at least one")
    names = [e.source for e in edits]
    plans = []
    for choice in choices:
        method, options = options_from_rows(choice, option_tables.get(choice), settings)
        uses = method_info(method).masks
        masks = None if uses == MASKS_UNUSED else masks_for_edit(edits, givens, editor_values, uses == MASKS_REQUIRED)
        if masks is not None:  # an empty mask is the pipeline's one-line error, before any method runs
            side = size or method_info(method).default_size
            ObjectMasks.from_sources(masks, names, (side, side), 0.0)
        plans.append((choice, method, options, masks))
    scene_edit = scene_edit_for(scene, edits)
    ideal = render_edit(scene, scene_edit) if scene_edit is not None else None
    image = image.convert("RGB")
    out_dir = out_dir or tempfile.mkdtemp(prefix="aledit-ui-")
    results = []
    for n, (choice, method, options, masks) in enumerate(plans):
        total = steps or method_info(method).default_steps

        def step_done(step, _latents, n=n, choice=choice, total=total):
            if progress is not None:
                progress((n + (step + 1) / total) / len(plans), f"{choice}: step {step + 1}/{total}")

        start = time.perf_counter()
        out = pipe.edit(
            image, edits, masks, method=method, options=options, seed=seed, steps=steps, size=size,
            return_attention=True, callback_on_step_end=step_done, progress=False,
        )
        seconds = time.perf_counter() - start
        panels, titles = [image], ["source"]
        if out.object_masks is not None:
            panels.append(mask_overlay(image, out.object_masks, names))
            titles.append("masks")
        panels.append(out.image)
        titles.append(f"{choice}: " + "; ".join(f"{e.source} -> {e.target}" for e in edits))
        picture = side_by_side([display_image(p) for p in panels], titles, height=DISPLAY_SIDE)
        attention = []
        if out.attention_maps is not None:
            for name, amap in zip(names, out.attention_maps.float().cpu().numpy()):
                attention.append((attention_overlay(image, amap), f"{choice}: {name}"))
        scores = None
        if scene_edit is not None:
            edited = np.asarray(out.image.convert("RGB").resize((scene.image.shape[1], scene.image.shape[0])))
            scores = score_edit(scene, scene_edit, edited, ideal=ideal).as_dict()
        results.append(MethodResult(choice, out.image, picture, attention, scores, seconds))
        del out
    files = []
    for r in results:
        path = os.path.join(out_dir, f"{_safe(r.name)}.png")
        r.image.save(path)
        files.append(path)
    if len(results) > 1:
        width = max(r.picture.width for r in results)
        sheet = Image.new("RGB", (width, sum(r.picture.height for r in results)), "white")
        y = 0
        for r in results:
            sheet.paste(r.picture, (0, y))
            y += r.picture.height
    else:
        sheet = results[0].picture
    comparison = os.path.join(out_dir, "comparison.png")
    sheet.save(comparison)
    files.insert(0, comparison)
    return EditResults(results, scene_edit, sheet, files)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "method"


def one_line(exc: BaseException) -> str:
    """The one line a user sees for ``exc``."""
    return " ".join(str(exc).split()) if isinstance(exc, USER_ERRORS) else first_line(exc)

