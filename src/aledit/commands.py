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
    "Interrupted",
    "UsageError",
    "add_method_options",
    "add_provider_options",
    "check_args",
    "check_device",
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line to print about what was kept."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# -- numbers, seeds and devices: one rule per option, checked for every command ---------------

SEED_MAX = 2**63 - 1
"""Largest seed: seeds are stored as SQLite / int64 integers; ``torch.Generator.manual_seed`` and
``numpy.random.default_rng`` accept every seed in ``[0, SEED_MAX]``."""

# ``args`` attribute -> (low, high, integer). Every ``type=int`` / ``type=float`` option of every
# command must be listed (tests/test_cli.py checks it); ``size`` has its own rule.
NUMBER_RULES: dict[str, tuple[float | None, float | None, bool]] = {
    "steps": (1, None, True),
    "seed": (0, SEED_MAX, True),
    "edit_seed": (0, SEED_MAX, True),
    "limit": (1, None, True),
    "edits": (1, None, True),
    "instances": (1, None, True),
    "max_objects": (1, None, True),
    "self_replace": (0.0, 1.0, False),
    "dilation": (0.0, 1.0, False),
    "target_guidance": (0.0, None, False),
    "source_guidance": (0.0, None, False),
    "eta": (0.0, 1.0, False),
    "box_threshold": (0.0, 1.0, False),
    "text_threshold": (0.0, 1.0, False),
    "attention_threshold": (0.0, 1.0, False),
    "port": (1, 65535, True),
}


def check_size(flag: str, size) -> None:
    """A working resolution: a positive multiple of 8 (the VAE's factor)."""
    from .validation import check_number

    try:
        check_number(flag, size, 8, None, integer=True)
    except ValueError as exc:
        raise UsageError(f"{exc}; it must be a positive multiple of 8, e.g. 512") from None
    if size % 8:
        raise UsageError(f"{flag} must be a positive multiple of 8, got {size}")


def check_device(device: str | None) -> None:
    """:class:`UsageError` unless ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) exists here;
    the message lists the devices that do."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    available = ["cpu"]
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_count:
        available += ["cuda"] + [f"cuda:{i}" for i in range(cuda_count)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    if dev.type == "cpu":
        ok = True
    elif dev.type == "cuda":
        ok = cuda_count > 0 and (dev.index is None or dev.index < cuda_count)
    elif dev.type == "mps":
        ok = "mps" in available
    else:
        backend = getattr(torch, dev.type, None)
        ok = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
    if not ok:
        raise UsageError(f"device {device} is not available (available: {', '.join(available)})")


def check_args(args: argparse.Namespace) -> None:
    """Checks every numeric option, seed and device of a parsed command line before anything is
    loaded: finite, in range (:data:`NUMBER_RULES`), sizes multiples of 8;
    :class:`UsageError` naming the option otherwise."""
    from .validation import check_number

    for dest, value in vars(args).items():
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest == "size":
            check_size(flag, value)
        elif dest in NUMBER_RULES:
            low, high, integer = NUMBER_RULES[dest]
            try:
                check_number(flag, value, integer=integer)  # a finite number (an int where needed)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if (low is not None and value < low) or (high is not None and value > high):
                raise UsageError(f"{flag} must be {_bounds(low, high)}, got {value}")
    check_device(getattr(args, "device", None))


def _bounds(low, high) -> str:
    def fmt(x) -> str:
        return "2**63 - 1" if x == SEED_MAX else (str(x) if isinstance(x, int) else f"{x:g}")

    if high is None:
        return f">= {fmt(low)}"
    if low is None:
        return f"<= {fmt(high)}"
    return f"in [{fmt(low)}, {fmt(high)}]"


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


PRESET_MODELS = ("tiny-random", "synthetic-tiny")
HUB_CHECK_TIMEOUT_S = 3.0


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable_reason(timeout_s: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached now (``HF_HUB_OFFLINE`` set, or no connection
    to its host within ``timeout_s``), or None. Behind a proxy only ``HF_HUB_OFFLINE`` counts."""
    import socket
    import threading
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or getattr(constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(getattr(constants, "ENDPOINT", None) or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[BaseException | None] = []

    def connect() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return f"no answer from {host} within {timeout_s:g} s"
    if result[0] is not None:
        return f"{host} is unreachable: {first_line(result[0])}"
    return None


def _in_hub_cache(repo_id: str, files: tuple[str, ...]) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in files:
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except Exception:  # not a valid repo id: loading will say so  # noqa: BLE001
            return False
    return False


def check_hub_model(model: str, flag: str = "--model", offline_hint: str | None = None,
                    cache_files: tuple[str, ...] = ("model_index.json", "config.json")) -> None:
    """Fails fast, with one line, when ``model`` is a hub id that is not in the local cache while
    the hub cannot be reached (instead of the hub client's retries); local folders and the
    offline presets pass."""
    model = str(model)
    looks_like_path = model.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(model) or os.path.exists(model)
    if model in PRESET_MODELS or looks_like_path or _in_hub_cache(model, cache_files):
        return  # a folder (a missing one fails with its own message when loading) or a cached id
    reason = hub_unreachable_reason()
    if reason is None:
        return
    hint = offline_hint or "give a local model folder, or 'tiny-random' or 'synthetic-tiny', which run offline"
    raise UsageError(f"{flag} {model!r} is a hub id that is not downloaded yet, and the hub cannot be reached ({reason}); {hint}")


def load_pipeline(model: str | None, device: str | None, method: str = "ale"):
    """The :class:`~aledit.pipeline.EditPipeline` of ``model`` (default: ``method``'s paper's
    model) on ``device`` (default: cuda if available); :class:`UsageError` if it cannot load."""
    import torch

    from .methods.registry import method_info
    from .pipeline import ALEEditPipeline

    model = model or method_info(method).default_model
    check_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_model_arg(model)
    check_hub_model(model)
    logger.info("loading %s on %s", model, device)
    quiet_loading_bar()
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

        hint = "give masks with --mask, or use --mask-provider attention, which needs no extra model"
        check_hub_model(args.detector or DEFAULT_DETECTOR, "--detector", hint, ("config.json",))
        check_hub_model(args.segmenter or DEFAULT_SEGMENTER, "--segmenter", hint, ("config.json",))
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


def quiet_loading_bar() -> None:
    """No "Loading pipeline components" bar from diffusers unless ``-v``."""
    if not logger.isEnabledFor(logging.INFO):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


def quiet_libraries() -> None:
    """Keeps stderr for our progress bar and errors: no weight-loading bars from transformers."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing or changed: its bars are only cosmetic
        pass


def close_progress_bars() -> None:
    """Closes every live tqdm bar, so a message printed next starts on its own line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar that cannot close is only cosmetic  # noqa: BLE001
            pass


def interrupted_message(exc: BaseException) -> str:
    """What a Ctrl-C left behind, for the one line the CLI prints."""
    if isinstance(exc, Interrupted):
        return exc.message
    written = getattr(exc, "written", None)
    if not written:
        return "aledit: interrupted; nothing written"
    return f"aledit: interrupted; wrote {', '.join(written)} (complete); the other outputs were not written"


def run_parser(parser: argparse.ArgumentParser | None, argv: list[str] | None = None, build=None) -> int:
    """Parses ``argv`` and runs the chosen command; user mistakes become one line and exit 2,
    Ctrl-C one line (what was written) and exit 130. ``build()`` makes the parser when
    ``parser`` is None (so a Ctrl-C while the libraries import prints no traceback either).

    A Ctrl-C can land inside a library's import machinery, which may turn the KeyboardInterrupt
    into another error (diffusers' lazy imports raise RuntimeError); so while the command runs,
    SIGINT is noted, and any error after one is reported as the interrupt."""
    import signal
    import threading

    received: list[int] = []

    def on_sigint(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if parser is None:
            parser = build()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", force=True)
        # huggingface_hub logs through its own stderr handler and also propagates: each line twice.
        logging.getLogger("huggingface_hub").propagate = False
        if not args.verbose:
            quiet_libraries()
        check_args(args)
        return args.run(args)
    except UsageError as exc:
        close_progress_bars()
        print(f"aledit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        close_progress_bars()
        print(interrupted_message(exc), file=sys.stderr)
        return 130
    except Exception:
        if not received:
            raise
        close_progress_bars()
        print("aledit: interrupted; nothing written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
