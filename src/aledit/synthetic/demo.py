"""``aledit demo``: one synthetic scene, two objects edited naively and with ALE, scored exactly.

Runs in seconds on a CPU with the packaged ``synthetic-tiny`` model: draws a 3-object scene
(:func:`aledit.synthetic.random_scene`), a random edit of two of its objects, runs the naive
two-branch edit (ORE, RGB-CAM and BB off) and ALE on the same noise, writes a side-by-side PNG
(source | naive | ALE | masks) and scores both with :func:`aledit.synthetic.score_edit`.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..edits import EditType
from ..io import save_image_atomic
from ..reporting import to_markdown
from ..visualize import mask_overlay, side_by_side
from .metrics import EditScores, score_edit
from .model import ABLATION_SWITCHES, SYNTHETIC_EDIT_SETTINGS, SyntheticEditSettings
from .scenes import Scene, SceneEdit, random_edit, random_scene, render_edit

__all__ = ["DemoResult", "format_scores", "register", "run_demo"]

PANEL = 256  # pixels per panel side in the picture

# Scores printed by the demo: (key of EditScores.as_dict(), column title).
DEMO_KEYS: tuple[tuple[str, str], ...] = (
    ("success", "success ↑"),
    ("ti_leakage", "TI leakage ↓"),
    ("te_changed", "TE changed ↓"),
    ("te_target_color", "TE target colour ↓"),
    ("structure_kept", "structure kept ↑"),
    ("color_kept", "colour kept ↑"),
    ("material_kept", "material kept ↑"),
)


@dataclass(frozen=True, eq=False)
class DemoResult:
    """Everything the demo made.

    Attributes:
        scene: the source scene.
        edit: the edit of two objects.
        ideal: the ideal edited scene.
        images: ``{"naive": uint8 [H, W, 3], "ALE": ...}``.
        scores: ``{"naive": EditScores, "ALE": EditScores}``.
        picture: the side-by-side picture that was written.
    """

    scene: Scene
    edit: SceneEdit
    ideal: Scene
    images: dict[str, np.ndarray]
    scores: dict[str, EditScores]
    picture: Image.Image

    @property
    def edit_text(self) -> str:
        return "; ".join(f"{s} -> {t}" for s, t in self.edit.pairs)


def _panel(image: np.ndarray | Image.Image) -> Image.Image:
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return im.convert("RGB").resize((PANEL, PANEL), Image.NEAREST)


def _picture(scene: Scene, edit: SceneEdit, images: dict[str, np.ndarray], scores: dict[str, EditScores]) -> Image.Image:
    import torch

    names = [e.source_phrase for e in edit.objects]
    masks = torch.from_numpy(np.stack([scene.masks[e.index] for e in edit.objects]))
    panels = [_panel(scene.image), _panel(images["naive"]), _panel(images["ALE"]), mask_overlay(_panel(scene.image), masks, names)]
    labels = [
        "source",
        f"naive: success {scores['naive'].success:.2f}, TI {_fmt(scores['naive'].ti_leakage)}",
        f"ALE: success {scores['ALE'].success:.2f}, TI {_fmt(scores['ALE'].ti_leakage)}",
        "masks",
    ]
    row = side_by_side(panels, labels, height=PANEL)
    footer = 18
    picture = Image.new("RGB", (row.width, row.height + footer), "white")
    picture.paste(row, (0, 0))
    text = f"{edit.edit_type.value} edit: " + "; ".join(f"{s} -> {t}" for s, t in edit.pairs)
    ImageDraw.Draw(picture).text((4, row.height + 3), text, fill=(0, 0, 0))
    return picture


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_scores(scores: dict[str, EditScores]) -> str:
    """A Markdown table of the demo's scores, one row per configuration (``n/a``: does not apply)."""
    frame = pd.DataFrame.from_dict({name: s.as_dict() for name, s in scores.items()}, orient="index")
    table = frame[[k for k, _ in DEMO_KEYS]].map(lambda v: _fmt(v, 3))
    table.columns = [t for _, t in DEMO_KEYS]
    return to_markdown(table.rename_axis("config").reset_index())


def run_demo(
    out_path: str | os.PathLike,
    seed: int = 0,
    edit_type: EditType | str = EditType.MATERIAL,
    *,
    pipe=None,
    settings: SyntheticEditSettings = SYNTHETIC_EDIT_SETTINGS,
    n_objects: int = 3,
) -> DemoResult:
    """Edits two objects of a random scene naively and with ALE; writes the picture to
    ``out_path`` (PNG) and returns images, exact scores and the picture.

    Args:
        seed: seeds the scene, the edit and the noise.
        edit_type: one of the five edit types.
        pipe: an ``ALEEditPipeline`` (default: the packaged ``synthetic-tiny``).
        settings: engine settings (steps, eta, guidance, size).
        n_objects: objects in the scene (2 or more; two are edited).
    """
    if n_objects < 2:
        raise ValueError(f"the demo edits two objects, so the scene needs n_objects >= 2, got {n_objects}")
    if pipe is None:
        from .model import load_synthetic_pipeline

        pipe = load_synthetic_pipeline()
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, n_objects, settings.size)
    edit = random_edit(scene, EditType(edit_type), rng, n_edit=2)
    ideal = render_edit(scene, edit)
    masks = {e.source_phrase: scene.masks[e.index].copy() for e in edit.objects}
    images, scores = {}, {}
    for name in ("naive", "ALE"):
        out = pipe.edit(
            Image.fromarray(scene.image),
            edit.edits,
            masks,
            seed=seed,
            steps=settings.steps,
            size=settings.size,
            config=settings.config(**ABLATION_SWITCHES[name]),
            progress=False,
        )
        images[name] = np.asarray(out.image.convert("RGB"))
        scores[name] = score_edit(scene, edit, images[name], ideal=ideal)
    picture = _picture(scene, edit, images, scores)
    save_image_atomic(picture, out_path)
    return DemoResult(scene, edit, ideal, images, scores, picture)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``demo`` command to ``subparsers``; the parsed namespace's ``run(args)`` runs it."""
    p = subparsers.add_parser(
        "demo",
        help="edit two objects of a synthetic scene, naive vs. ALE, with exact scores",
        description="Draw a synthetic scene, edit two objects with the naive two-branch edit and with ALE "
        "(packaged synthetic-tiny model, CPU, seconds), write source | naive | ALE | masks and print exact scores.",
    )
    p.add_argument("--out", default="demo.png", help="PNG to write (default demo.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene, edit and noise (default 0)")
    p.add_argument(
        "--edit-type",
        default=EditType.MATERIAL.value,
        choices=[t.value for t in EditType],
        help="edit type (default material, the type synthetic-tiny edits best)",
    )
    p.add_argument("--model", default=None, help="model folder (default: the packaged synthetic-tiny)")
    p.add_argument("--steps", type=int, default=SYNTHETIC_EDIT_SETTINGS.steps)
    p.set_defaults(run=_run_demo)
    return p


def _run_demo(args) -> int:
    from ..commands import UsageError
    from ..io import check_output_image

    try:
        check_output_image(args.out)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    from ..commands import load_pipeline, quiet_loading_bar

    quiet_loading_bar()
    pipe = None
    if args.model is not None:
        pipe = load_pipeline(args.model, "cpu")
    result = run_demo(args.out, args.seed, args.edit_type, pipe=pipe, settings=SYNTHETIC_EDIT_SETTINGS.replace(steps=args.steps))
    try:
        print(f"scene: {result.scene.caption} ({result.scene.background} background)")
        print(f"edit ({result.edit.edit_type.value}): {result.edit_text}")
        print(format_scores(result.scores))
        print(f"wrote {args.out}")
    except KeyboardInterrupt:
        from ..io import OutputsInterrupted

        raise OutputsInterrupted([args.out]) from None
    return 0
