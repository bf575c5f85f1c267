"""Command line: ``aledit edit IMAGE --edit "wolf -> pink-colored wolf" --mask wolf=wolf.png``.

User mistakes end with one line on stderr (``aledit: error: ...``) and exit code 2; nothing is
written unless the whole edit succeeded (outputs are renamed into place).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]

logger = logging.getLogger("aledit")


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line."""


def _add_edit_parser(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="edit objects of an image",
        description="Edit the named objects of IMAGE and nothing else (ALE-Edit).",
    )
    p.add_argument("image", help="source image")
    p.add_argument(
        "--edit", action="append", default=[], metavar="'SRC -> TGT'",
        help="an object edit, e.g. 'wolf -> pink-colored wolf' (repeat for several objects)",
    )
    p.add_argument(
        "--mask", action="append", default=[], metavar="NAME=PATH",
        help="mask image of a source object, e.g. wolf=wolf.png (non-zero = object; any size)",
    )
    p.add_argument("--out", required=True, help="where to write the edited image (PNG/JPEG)")
    p.add_argument("--model", default=None, help="hub id or local folder (default SimianLuo/LCM_Dreamshaper_v7); 'tiny-random' runs offline")
    p.add_argument("--prompt", default=None, help="optional fuller description of the source image containing every source phrase")
    p.add_argument("--steps", type=int, default=15, help="denoising steps (default 15)")
    p.add_argument("--size", type=int, default=768, help="working resolution, multiple of 8 (default 768)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--self-replace", type=float, default=None, help="self-attention schedule in [0, 1] (default: by edit type)")
    p.add_argument("--dilation", type=float, default=0.01, help="mask dilation, ratio of the image side (default 0.01)")
    p.add_argument("--target-guidance", type=float, default=2.0)
    p.add_argument("--source-guidance", type=float, default=1.0)
    p.add_argument("--no-ore", action="store_true", help="switch off Object-Restricted Embeddings")
    p.add_argument("--no-rgb-cam", action="store_true", help="switch off region-guided cross-attention masking")
    p.add_argument("--no-bb", action="store_true", help="switch off background blending")
    p.add_argument("--side-by-side", action="store_true", help="also write OUT_side_by_side.png: source | masks | edit")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=_run_edit)


def _parse_masks(items: list[str]) -> dict[str, str]:
    masks = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"malformed --mask {item!r}: expected NAME=PATH, e.g. wolf=wolf.png")
        masks[" ".join(name.split())] = path.strip()
    return masks


def _check_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UsageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"image is not readable: {path} ({exc})") from None


def _run_edit(args) -> int:
    from .edits import EditError, parse_edit
    from .io import check_writable_dir

    # Everything that needs no model is checked first, so mistakes fail fast.
    if not args.edit:
        raise UsageError("no edits given: add --edit 'SOURCE -> TARGET'")
    try:
        edits = [parse_edit(text) for text in args.edit]
    except EditError as exc:
        raise UsageError(str(exc)) from None
    image = _check_image(args.image)
    masks = _parse_masks(args.mask)
    missing = [e.source for e in edits if e.source not in masks]
    if missing:
        raise UsageError(
            f"no --mask for {', '.join(repr(m) for m in missing)}; give one mask per source object, e.g. "
            f"--mask '{missing[0]}=mask.png'"
        )
    for name, path in masks.items():
        if not os.path.isfile(path):
            raise UsageError(f"mask file for {name!r} not found: {path}")
    try:
        check_writable_dir(args.out)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    if args.size <= 0 or args.size % 8:
        raise UsageError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")

    import torch

    from .io import save_image_atomic
    from .masks.ops import MaskError
    from .pipeline import DEFAULT_MODEL, ALEConfig, ALEEditPipeline
    from .prompts import PromptError
    from .visualize import mask_overlay, side_by_side

    try:
        config = ALEConfig(
            ore=not args.no_ore,
            rgb_cam=not args.no_rgb_cam,
            background_blend=not args.no_bb,
            self_replace=args.self_replace,
            source_guidance=args.source_guidance,
            target_guidance=args.target_guidance,
            dilation_ratio=args.dilation,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    model = args.model or DEFAULT_MODEL
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    logger.info("loading %s on %s", model, device)
    try:
        pipe = ALEEditPipeline.from_pretrained(model).to(device)
    except Exception as exc:  # any loading failure is the user's model argument or network
        raise UsageError(f"could not load model {model!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    try:
        result = pipe.edit(
            image, edits, masks, seed=args.seed, steps=args.steps, size=args.size, config=config,
            source_prompt=args.prompt,
        )
    except (EditError, MaskError, PromptError) as exc:
        raise UsageError(str(exc)) from None

    outputs = [(result.image, args.out)]
    if args.side_by_side:
        stem, _ = os.path.splitext(args.out)
        names = [e.source for e in edits]
        picture = side_by_side(
            [image, mask_overlay(image, result.object_masks, names), result.image],
            ["source", "masks", "edit: " + "; ".join(f"{e.source} -> {e.target}" for e in edits)],
        )
        outputs.append((picture, stem + "_side_by_side.png"))
    for picture, path in outputs:
        save_image_atomic(picture, path)
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aledit", description="Multi-object image editing without attribute leakage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_edit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", force=True)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"aledit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aledit: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
