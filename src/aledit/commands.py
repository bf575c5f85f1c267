"""What every ``aledit`` command shares: the one-line user error, loading a pipeline or a mask
provider from command-line options, the method options, and running a parser.

:mod:`aledit.cli`, :mod:`aledit.bench.cli`, :mod:`aledit.synthetic` and the web app import from
here (never from each other), so there are no import circles.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = [
    "UsageError",
    "add_method_options",
    "add_provider_options",
    "check_image",
    "first_line",
    "load_pipeline",
    "mask_provider",
    "method_from_args",
    "run_parser",
]

logger = logging.getLogger("aledit")


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line."""


def add_provider_options(p, flag: str) -> None:
    p.add_argument(
        flag, dest="provider", choices=("grounded-sam", "attention"), default=None,
        help="how to find objects without a mask: grounded-sam (GroundingDINO + SAM, the paper's; the default "
        "for methods that need masks) or attention (clusters of the editing model's own attention, no extra model)",
    )
    p.add_argument("--box-threshold", type=float, default=0.45, help="grounded-sam: detector box score threshold")
    p.add_argument("--text-threshold", type=float, default=0.40, help="grounded-sam: detector text score threshold")
    p.add_argument("--detector", default=None, help="grounded-sam: GroundingDINO hub id or folder")
    p.add_argument("--segmenter", default=None, help="grounded-sam: SAM hub id or folder")
    p.add_argument("--attention-threshold", type=float, default=0.2, help="attention: cluster agreement threshold (DPL's TH)")
    p.add_argument("--mask-cache", default=default_mask_cache(), metavar="DIR", help="where found masks are cached")
    p.add_argument("--no-mask-cache", action="store_true", help="always recompute found masks")


def default_mask_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "aledit", "masks")


def check_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UsageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"image is not readable: {path} ({exc})") from None


def check_model_arg(model: str) -> None:
    """A path that does not exist would otherwise be tried as a hub id, with a confusing error:
    say so before anything else happens."""
    if str(model).startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(model)):
        raise UsageError(f"model folder does not exist: {model}")


def load_pipeline(model: str | None, device: str | None, method: str = "ale"):
    """The :class:`~aledit.pipeline.EditPipeline` of ``model`` (default: ``method``'s paper's
    model) on ``device`` (default: cuda if available); :class:`UsageError` if it cannot load."""
    import torch

    from .methods.registry import method_info
    from .pipeline import ALEEditPipeline

    model = model or method_info(method).default_model
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_model_arg(model)
    logger.info("loading %s on %s", model, device)
    try:
        return ALEEditPipeline.from_pretrained(model).to(device)
    except Exception as exc:  # any loading failure is the user's model argument or network
        raise UsageError(f"could not load model {model!r}: {first_line(exc)}") from None


def add_method_options(p, ale_shortcuts: bool = True) -> None:
    """``--method NAME`` and ``--option KEY=VALUE`` (any field of the method's config), plus the
    ALE switches as shortcuts (``--no-ore`` = ``--option ore=false``)."""
    from .methods.registry import available_methods

    p.add_argument(
        "--method", default="ale", metavar="NAME",
        help=f"editing method: {', '.join(available_methods())} (default ale; `aledit methods` lists them)",
    )
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of the method's config, e.g. cross_replace=0.6 (repeat; `aledit methods NAME` lists them)",
    )
    if not ale_shortcuts:
        return
    p.add_argument("--self-replace", type=float, default=None, help="self-attention schedule in [0, 1] (ALE default: by edit type)")
    p.add_argument("--dilation", type=float, default=None, help="ale: mask dilation, ratio of the image side (default 0.01)")
    p.add_argument("--target-guidance", type=float, default=None, help="ale/infedit: target guidance (ale default 2)")
    p.add_argument("--source-guidance", type=float, default=None, help="ale/infedit: source guidance (default 1)")
    p.add_argument("--no-ore", action="store_true", help="ale: switch off Object-Restricted Embeddings")
    p.add_argument("--no-rgb-cam", action="store_true", help="ale: switch off region-guided cross-attention masking")
    p.add_argument("--no-bb", action="store_true", help="ale: switch off background blending")
    p.add_argument(
        "--preset", default=None, metavar="paper|authors",
        help="ale: 'paper' (default) or 'authors' to reproduce the authors' code (docs/ale_presets.md)",
    )
    p.add_argument(
        "--task", default=None, choices=("edit", "retain", "background", "remove"),
        help="cpam: edit the object, retain its identity, change only the background, or remove it (default edit)",
    )


_SHORTCUTS = (
    ("self_replace", "self_replace", None),
    ("dilation", "dilation_ratio", None),
    ("target_guidance", "target_guidance", None),
    ("source_guidance", "source_guidance", None),
    ("no_ore", "ore", False),
    ("no_rgb_cam", "rgb_cam", False),
    ("no_bb", "background_blend", False),
    ("preset", "preset", None),
    ("task", "task", None),
)


def method_from_args(args) -> tuple[str, dict]:
    """``(method name, options)`` from ``--method``, ``--option`` and the shortcuts, every option
    checked against the method's config (before any model loads); :class:`UsageError` otherwise."""
    from .methods.registry import MethodError, make_config, parse_options

    name = args.method
    try:
        options = parse_options(name, args.option)
        for attr, field, value in _SHORTCUTS:
            given = getattr(args, attr, None)
            if given is None or given is False:
                continue
            options[field] = given if value is None else value
        make_config(name, options)
    except MethodError as exc:
        raise UsageError(str(exc)) from None
    return name, options


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def mask_provider(args, pipe=None):
    """The provider the options ask for, cached on disk unless --no-mask-cache."""
    from .masks import CachedMaskProvider

    if (args.provider or "grounded-sam") == "attention":
        from .masks.attention import AttentionMasks

        if pipe is None:
            pipe = load_pipeline(args.model, args.device)
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
                f"could not load Grounded-SAM ({first_line(exc)}); give masks with --mask or use "
                "--mask-provider attention, which needs no extra model"
            ) from None
        key_parts = None
    if args.no_mask_cache:
        return provider
    try:
        return CachedMaskProvider(provider, args.mask_cache, key_parts=key_parts)
    except OSError as exc:
        raise UsageError(str(exc)) from None


def quiet_libraries() -> None:
    """Keeps stderr for our progress bar and errors: no weight-loading bars from transformers."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing or changed: its bars are only cosmetic
        pass


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; user mistakes become one line and exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", force=True)
    if not args.verbose:
        quiet_libraries()
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"aledit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aledit: interrupted; nothing written", file=sys.stderr)
        return 130


