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
        help="mask image of a source object, e.g. wolf=wolf.png (any size); without any --mask a "
        "mask provider finds the objects",
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
    p.add_argument("--save-masks", default=None, metavar="DIR", help="write the masks the edit used (PNG per object + overlay)")
    _add_provider_options(p, "--mask-provider")
    p.set_defaults(run=_run_edit)


def _add_provider_options(p, flag: str) -> None:
    p.add_argument(
        flag, dest="provider", choices=("grounded-sam", "attention"), default="grounded-sam",
        help="how to find objects without a mask: grounded-sam (GroundingDINO + SAM, the paper's) or "
        "attention (clusters of the editing model's own attention, no extra model)",
    )
    p.add_argument("--box-threshold", type=float, default=0.45, help="grounded-sam: detector box score threshold")
    p.add_argument("--text-threshold", type=float, default=0.40, help="grounded-sam: detector text score threshold")
    p.add_argument("--detector", default=None, help="grounded-sam: GroundingDINO hub id or folder")
    p.add_argument("--segmenter", default=None, help="grounded-sam: SAM hub id or folder")
    p.add_argument("--attention-threshold", type=float, default=0.2, help="attention: cluster agreement threshold (DPL's TH)")
    p.add_argument("--mask-cache", default=_default_cache(), metavar="DIR", help="where found masks are cached")
    p.add_argument("--no-mask-cache", action="store_true", help="always recompute found masks")


def _default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "aledit", "masks")


def _add_masks_parser(sub) -> None:
    p = sub.add_parser(
        "masks",
        help="find object masks and preview them",
        description="Find a mask per object of IMAGE and write one PNG per object plus overlay.png.",
    )
    p.add_argument("image", help="source image")
    p.add_argument("--object", action="append", default=[], help="object phrase (repeat), e.g. --object wolf")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")
    p.add_argument("--model", default=None, help="attention provider: the diffusion model (hub id, folder, tiny-random)")
    p.add_argument("--size", type=int, default=512, help="attention provider: working resolution")
    p.add_argument("--device", default=None)
    _add_provider_options(p, "--provider")
    p.set_defaults(run=_run_masks)


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
    if masks:
        missing = [e.source for e in edits if e.source not in masks]
        if missing:
            raise UsageError(
                f"no --mask for {', '.join(repr(m) for m in missing)}; give one mask per source object, e.g. "
                f"--mask '{missing[0]}=mask.png', or no --mask at all to find them with --mask-provider"
            )
        unknown = [name for name in masks if name not in {e.source for e in edits}]
        if unknown:
            raise UsageError(f"--mask {unknown[0]!r} names no edited object (edited: {', '.join(e.source for e in edits)})")
    for name, path in masks.items():
        if not os.path.isfile(path):
            raise UsageError(f"mask file for {name!r} not found: {path}")
    try:
        check_writable_dir(args.out)
        if args.save_masks:
            os.makedirs(args.save_masks, exist_ok=True)
            check_writable_dir(os.path.join(args.save_masks, "overlay.png"))
    except OSError as exc:
        raise UsageError(str(exc)) from None
    if args.size <= 0 or args.size % 8:
        raise UsageError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")

    from .io import save_image_atomic
    from .masks.ops import MaskError
    from .pipeline import ALEConfig
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

    pipe = _load_pipeline(args.model, args.device)
    provider = masks or _mask_provider(args, pipe)
    try:
        result = pipe.edit(
            image, edits, provider, seed=args.seed, steps=args.steps, size=args.size, config=config,
            source_prompt=args.prompt,
        )
    except (EditError, MaskError, PromptError) as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    if args.save_masks:
        _write_masks(args.save_masks, image, [e.source for e in edits], result.object_masks)

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


def _load_pipeline(model: str | None, device: str | None):
    import torch

    from .pipeline import DEFAULT_MODEL, ALEEditPipeline

    model = model or DEFAULT_MODEL
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # A path that does not exist would otherwise be tried as a hub id, with a confusing error.
    if str(model).startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(model)):
        raise UsageError(f"model folder does not exist: {model}")
    logger.info("loading %s on %s", model, device)
    try:
        return ALEEditPipeline.from_pretrained(model).to(device)
    except Exception as exc:  # any loading failure is the user's model argument or network
        raise UsageError(f"could not load model {model!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mask_provider(args, pipe=None):
    """The provider the options ask for, cached on disk unless --no-mask-cache."""
    from .masks import CachedMaskProvider

    if args.provider == "attention":
        from .masks.attention import AttentionMasks

        if pipe is None:
            pipe = _load_pipeline(args.model, args.device)
        provider = AttentionMasks(pipe, threshold=args.attention_threshold, size=getattr(args, "size", 512))
        key_parts = {"model": args.model or "default"}
    else:
        from .masks import GroundedSAM
        from .masks.grounded_sam import DEFAULT_DETECTOR, DEFAULT_SEGMENTER

        logger.info("loading Grounded-SAM")
        try:
            provider = GroundedSAM.from_pretrained(
                args.detector or DEFAULT_DETECTOR,
                args.segmenter or DEFAULT_SEGMENTER,
                device=args.device,
                box_threshold=args.box_threshold,
                text_threshold=args.text_threshold,
            )
        except Exception as exc:
            raise UsageError(
                f"could not load Grounded-SAM ({_first_line(exc)}); give masks with --mask or use "
                "--mask-provider attention, which needs no extra model"
            ) from None
        key_parts = None
    if args.no_mask_cache:
        return provider
    try:
        return CachedMaskProvider(provider, args.mask_cache, key_parts=key_parts)
    except OSError as exc:
        raise UsageError(str(exc)) from None


def _safe_name(phrase: str) -> str:
    return "".join(c if c.isalnum() or c in " -_." else "_" for c in phrase).strip() or "object"


def _write_masks(directory: str, image, names, masks) -> None:
    """One PNG per object (255 = object, at the image's size) and ``overlay.png``."""
    import numpy as np
    from PIL import Image

    from .io import save_image_atomic
    from .visualize import mask_overlay

    os.makedirs(directory, exist_ok=True)
    for name, mask in zip(names, masks):
        picture = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).resize(image.size, Image.NEAREST)
        save_image_atomic(picture, os.path.join(directory, _safe_name(name) + ".png"))
    save_image_atomic(mask_overlay(image, masks, names), os.path.join(directory, "overlay.png"))
    print(f"wrote {len(names)} masks and overlay.png to {directory}")


def _run_masks(args) -> int:
    import torch

    from .io import check_writable_dir
    from .masks.ops import MaskError

    if not args.object:
        raise UsageError("no objects given: add --object PHRASE")
    names = [" ".join(o.split()) for o in args.object]
    if any(not n for n in names):
        raise UsageError("an --object phrase is empty")
    image = _check_image(args.image)
    try:
        os.makedirs(args.out, exist_ok=True)
        check_writable_dir(os.path.join(args.out, "overlay.png"))
    except OSError as exc:
        raise UsageError(str(exc).replace("output directory", "--out folder")) from None
    provider = _mask_provider(args)
    try:
        found = provider(image, names)
    except MaskError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    _write_masks(args.out, image, names, torch.stack([found[n] for n in names]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aledit", description="Multi-object image editing without attribute leakage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_edit_parser(sub)
    _add_masks_parser(sub)
    from .bench.cli import register as register_bench  # lazy: bench.cli imports UsageError from here

    register_bench(sub)
    from .synthetic.demo import register as register_demo

    register_demo(sub)
    return parser


def _quiet_libraries() -> None:
    """Keeps stderr for our progress bar and errors: no weight-loading bars from transformers."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing or changed: its bars are only cosmetic
        pass


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; user mistakes become one line and exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", force=True)
    if not args.verbose:
        _quiet_libraries()
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
