#!/usr/bin/env python
"""A picture of synthetic benchmark edits: one row per (model, case), columns source, each
configuration's edit, and the ideal edit. Cases are those of ``aledit bench synthetic`` (same
seed and index, same noise), so the rows show the edits behind its records::

    python scripts/synthetic_edit_grid.py --model v1=synthetic-tiny --model R4=RUN \\
        --cases 5,17,1 --configs naive,ALE --source-guidance 1,8 --out grid.png
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from aledit.commands import UsageError, check_args as check_numbers
from aledit.io import save_image_atomic
from aledit.synthetic.bench import bench_cases, edit_case, resolve_config
from aledit.synthetic.model import SYNTHETIC_EDIT_SETTINGS, synthetic_model_path
from aledit.visualize import _font


def _numbers(text: str, flag: str, kind=float, low: float = 0.0) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not np.isfinite(v) or v < low for v in values):
        raise UsageError(f"{flag} needs finite numbers >= {low:g}, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="synthetic_edit_grid", description=__doc__.split("::")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=DIR",
                   help="a model folder, or synthetic-tiny for the packaged one (repeatable)")
    p.add_argument("--cases", default="0,1,2", help="benchmark case indices (default 0,1,2)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    p.add_argument("--configs", default="naive,ALE", help="configurations (ALE ablation names or methods)")
    p.add_argument("--source-guidance", default=str(SYNTHETIC_EDIT_SETTINGS.source_guidance),
                   help="source guidance values; each gives every configuration a column (default 1)")
    p.add_argument("--scale", type=int, default=2, help="pixel scale of the 64x64 images (default 2)")
    p.add_argument("--out", required=True, help="output PNG")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[int], list[str], list[float]]:
    """Every input checked before a model loads; ``UsageError`` with one line otherwise."""
    models = []
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise UsageError(f"--model must be LABEL=DIR, got {spec!r}")
        if path == "synthetic-tiny":
            path = str(synthetic_model_path())
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise UsageError(f"--model {label}={path}: not a saved model folder (no model_index.json)")
        models.append((label, path))
    cases = _numbers(args.cases, "--cases", int)
    if max(cases) >= 10_000:
        raise UsageError(f"--cases are benchmark indices below 10000, got {max(cases)}")
    check_numbers(argparse.Namespace(seed=args.seed))  # the CLI's seed rule (the other options are lists)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs:
        raise UsageError("--configs is empty")
    for config in configs:
        try:
            resolve_config(config)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    guidance = _numbers(args.source_guidance, "--source-guidance")
    if not 1 <= args.scale <= 16:
        raise UsageError(f"--scale must be in [1, 16], got {args.scale}")
    if os.path.isdir(args.out) or not args.out.lower().endswith(".png"):
        raise UsageError(f"--out must be a .png file path, got {args.out!r}")
    return models, cases, configs, guidance


def edit_grid(models, cases, configs, guidance, seed: int = 0, scale: int = 2) -> Image.Image:
    """The grid (see the module docstring); ``models`` are ``(label, folder)`` pairs."""
    from aledit.pipeline import ALEEditPipeline

    bench = bench_cases(max(cases) + 1, seed)
    columns = [(f"{c}" + (f"\nsource guidance {g:g}" if len(guidance) > 1 else ""), c,
                SYNTHETIC_EDIT_SETTINGS.replace(source_guidance=g)) for g in guidance for c in configs]
    rows = []
    for label, folder in models:
        pipe = ALEEditPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        for i in cases:
            case = bench[i]
            images = [case.scene.image] + [edit_case(pipe, case, c, s) for _, c, s in columns] + [case.ideal.image]
            rows.append((f"{label}\ncase {i}: {case.edit_type.value}", images))
    side, pad, label_w, head_h = 64 * scale, 4, 120, 32
    titles = ["source"] + [t for t, _, _ in columns] + ["ideal edit"]
    canvas = Image.new("RGB", (label_w + len(titles) * (side + pad), head_h + len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.multiline_text((label_w + j * (side + pad) + 2, 3), title, fill="black", font=_font(11))
    for r, (label, images) in enumerate(rows):
        y = head_h + r * (side + pad)
        draw.multiline_text((4, y + side // 2 - 12), label, fill="black", font=_font(11))
        for j, image in enumerate(images):
            canvas.paste(Image.fromarray(image).resize((side, side), Image.NEAREST), (label_w + j * (side + pad), y))
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models, cases, configs, guidance = check_args(args)
    except UsageError as exc:
        print(f"synthetic_edit_grid: error: {exc}", file=sys.stderr)
        return 2
    grid = edit_grid(models, cases, configs, guidance, args.seed, args.scale)
    save_image_atomic(grid, args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
