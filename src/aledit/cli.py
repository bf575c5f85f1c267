"""Command line: ``aledit edit IMAGE --edit "wolf -> pink-colored wolf" --mask wolf=wolf.png
[--method ale|p2p|masactrl|fpe|infedit]``, ``aledit masks``, ``aledit methods``.

User mistakes end with one line on stderr (``aledit: error: ...``) and exit code 2; nothing is
written unless the whole edit succeeded (outputs are renamed into place).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .commands import (
    UsageError,
    add_method_options,
    add_provider_options,
    check_image,
    load_pipeline,
    mask_provider,
    method_from_args,
    run_parser,
)

__all__ = ["main", "UsageError"]

logger = logging.getLogger("aledit")


def _add_edit_parser(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="edit objects of an image",
        description="Edit the named objects of IMAGE and nothing else, with any registered method "
        "(ALE-Edit by default; `aledit methods` lists them with their options).",
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
    p.add_argument(
        "--model", default=None,
        help="hub id or local folder (default: the method's, e.g. SimianLuo/LCM_Dreamshaper_v7 for ale); "
        "'tiny-random' and 'synthetic-tiny' run offline",
    )
    p.add_argument("--prompt", default=None, help="optional fuller description of the source image containing every source phrase")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's, ale 15, p2p 50)")
    p.add_argument("--size", type=int, default=None, help="working resolution, multiple of 8 (default: the method's, ale 768, p2p 512)")
    p.add_argument("--seed", type=int, default=0)
    add_method_options(p)
    p.add_argument("--inversion-cache", default=None, metavar="DIR", help="keep DDIM / null-text inversions here for reuse")
    p.add_argument("--side-by-side", action="store_true", help="also write OUT_side_by_side.png: source | masks | edit")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--save-masks", default=None, metavar="DIR", help="write the masks the edit used (PNG per object + overlay)")
    add_provider_options(p, "--mask-provider")
    p.set_defaults(run=_run_edit)


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
    add_provider_options(p, "--provider")
    p.set_defaults(run=_run_masks)


def _parse_masks(items: list[str]) -> dict[str, str]:
    masks = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"malformed --mask {item!r}: expected NAME=PATH, e.g. wolf=wolf.png")
        name = " ".join(name.split())
        if name in masks:
            raise UsageError(f"--mask {name!r} is given twice ({masks[name]} and {path.strip()}); give one mask per object")
        masks[name] = path.strip()
    return masks


def _run_edit(args) -> int:
    from .edits import EditError, parse_edit
    from .io import check_output_dir, check_output_image

    # Everything that needs no model is checked first, so mistakes fail fast.
    if not args.edit:
        raise UsageError("no edits given: add --edit 'SOURCE -> TARGET'")
    try:
        edits = [parse_edit(text) for text in args.edit]
    except EditError as exc:
        raise UsageError(str(exc)) from None
    image = check_image(args.image)
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
    side_by_side_path = os.path.splitext(args.out)[0] + "_side_by_side.png" if args.side_by_side else None
    inputs = [args.image, *masks.values()]
    try:
        check_output_image(args.out, inputs)
        if side_by_side_path:
            check_output_image(side_by_side_path, inputs, flag="--side-by-side")
        if args.save_masks:
            check_output_dir(args.save_masks, "--save-masks")
        if args.inversion_cache:
            check_output_dir(args.inversion_cache, "--inversion-cache")
    except OSError as exc:
        raise UsageError(str(exc)) from None
    method, options = method_from_args(args)

    from .io import OutputsInterrupted, output_dir, save_outputs
    from .masks.ops import MaskError
    from .methods.base import MASKS_REQUIRED
    from .methods.registry import method_info
    from .prompts import PromptError
    from .visualize import mask_overlay, side_by_side

    uses_masks = method_info(method).masks
    if args.save_masks and uses_masks != MASKS_REQUIRED and not masks and args.provider is None:
        raise UsageError(f"--save-masks: method {method!r} finds no masks; give --mask or --mask-provider")
    pipe = load_pipeline(args.model, args.device, method)
    provider = masks or None
    if provider is None and (uses_masks == MASKS_REQUIRED or args.provider is not None):
        provider = mask_provider(args, pipe)
    try:
        result = pipe.edit(
            image, edits, provider, method=method, options=options, seed=args.seed, steps=args.steps,
            size=args.size, source_prompt=args.prompt, inversion_cache=args.inversion_cache,
        )
    except (EditError, MaskError, PromptError) as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    outputs = [(result.image, args.out)]
    if side_by_side_path:
        names = [e.source for e in edits]
        panels, titles = [image], ["source"]
        if result.object_masks is not None:
            panels.append(mask_overlay(image, result.object_masks, names))
            titles.append("masks")
        panels.append(result.image)
        titles.append(f"{method}: " + "; ".join(f"{e.source} -> {e.target}" for e in edits))
        outputs.append((side_by_side(panels, titles), side_by_side_path))
    written: list[str] = []
    try:
        if args.save_masks and result.object_masks is not None:
            with output_dir(args.save_masks):
                written += _write_masks(args.save_masks, image, [e.source for e in edits], result.object_masks)
        written += save_outputs(outputs)
        for path in written:
            print(f"wrote {path}")
    except KeyboardInterrupt as exc:  # say what is already in place
        raise OutputsInterrupted(written + getattr(exc, "written", [])) from None
    return 0


def _safe_name(phrase: str) -> str:
    return "".join(c if c.isalnum() or c in " -_." else "_" for c in phrase).strip() or "object"


def _mask_files(names: list[str]) -> list[str]:
    """The PNG file name of each object's mask; :class:`UsageError` if two objects (or an object
    and ``overlay.png``) would share one."""
    files = [_safe_name(name) + ".png" for name in names]
    seen = {"overlay.png": "the overlay"}
    for name, file in zip(names, files):
        if file in seen:
            other = seen[file]
            what = other if other == "the overlay" else repr(other)
            raise UsageError(f"--object {name!r} would be written to {file}, as {what} is; name each object once")
        seen[file] = name
    return files


def _write_masks(directory: str, image, names, masks) -> list[str]:
    """One PNG per object (255 = object, at the image's size) and ``overlay.png``; returns the
    paths written (:class:`~aledit.io.OutputsInterrupted` on Ctrl-C names those written so far)."""
    import numpy as np
    from PIL import Image

    from .io import save_outputs
    from .visualize import mask_overlay

    outputs = []
    for file, mask in zip(_mask_files(list(names)), masks):
        picture = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).resize(image.size, Image.NEAREST)
        outputs.append((picture, os.path.join(directory, file)))
    outputs.append((mask_overlay(image, masks, names), os.path.join(directory, "overlay.png")))
    return save_outputs(outputs)


def _run_masks(args) -> int:
    import torch

    from .io import OutputsInterrupted, check_output_dir, output_dir
    from .masks.ops import MaskError

    if not args.object:
        raise UsageError("no objects given: add --object PHRASE")
    names = [" ".join(o.split()) for o in args.object]
    if any(not n for n in names):
        raise UsageError("an --object phrase is empty")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--object {twice[0]!r} is given more than once; name each object once")
    _mask_files(names)
    image = check_image(args.image)
    try:
        check_output_dir(args.out)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    provider = mask_provider(args)
    try:
        found = provider(image, names)
    except MaskError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    with output_dir(args.out):
        written = _write_masks(args.out, image, names, torch.stack([found[n] for n in names]))
    try:
        print(f"wrote {len(names)} masks and overlay.png to {args.out}")
    except KeyboardInterrupt:
        raise OutputsInterrupted(written) from None
    return 0


def _add_methods_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the editing methods, their papers, default models and options",
        description="List every registered editing method; with NAME, its options and their defaults.",
    )
    p.add_argument("name", nargs="?", default=None, help="show one method's options")
    p.set_defaults(run=_run_methods)


def _run_methods(args) -> int:
    from .methods.registry import MethodError, available_methods, describe_option, method_info

    if args.name is None:
        print("| method | title | paper | default model | steps | size | sampler | masks |")
        print("|---|---|---|---|---|---|---|---|")
        for name in available_methods():
            info = method_info(name)
            print(
                f"| {name} | {info.title} | {info.paper} | {info.default_model} | {info.default_steps} "
                f"| {info.default_size} | {info.sampler} | {info.masks} |"
            )
        print("\n`aledit methods NAME` lists a method's options (`--option KEY=VALUE`).")
        return 0
    try:
        info = method_info(args.name)
    except MethodError as exc:
        raise UsageError(str(exc)) from None
    print(f"{info.name}: {info.title} ({info.paper})")
    print(f"  {info.summary}")
    print(f"  default model {info.default_model}, {info.default_steps} steps at {info.default_size}px, "
          f"sampler: {info.sampler}, masks: {info.masks}")
    print("  options (--option KEY=VALUE):")
    for key, value in info.defaults().items():
        print(f"    {key} = {describe_option(value)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aledit", description="Multi-object image editing without attribute leakage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_edit_parser(sub)
    _add_masks_parser(sub)
    _add_methods_parser(sub)
    from .bench.cli import register as register_bench

    register_bench(sub)
    from .synthetic.demo import register as register_demo

    register_demo(sub)
    from .ui import register as register_ui

    register_ui(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parser(None, argv, build=build_parser)


if __name__ == "__main__":
    sys.exit(main())
