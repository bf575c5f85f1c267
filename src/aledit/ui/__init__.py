"""``aledit ui``: a web app (Gradio) for editing, comparing methods side by side and checking
masks and attention. Gradio is an optional extra (``pip install "aledit[ui]"``): nothing here
imports it until the app is built, so the core package never needs it.

:mod:`aledit.ui.logic` holds what the page does as plain functions; :mod:`aledit.ui.app` builds
the ``gr.Blocks``.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["launch", "register", "require_gradio"]

logger = logging.getLogger("aledit")

MISSING_GRADIO = 'the web app needs Gradio: pip install "aledit[ui]" (or pip install "gradio>=5")'


def require_gradio():
    """Imports and returns ``gradio``; :class:`~aledit.commands.UsageError` (one line) if the
    ``ui`` extra is not installed."""
    from ..commands import UsageError

    try:
        import gradio
    except ImportError:
        raise UsageError(MISSING_GRADIO) from None
    return gradio


def make_app(model: str | None = None, device: str | None = None):
    """``(blocks, context)``: the page for ``model`` (default ``synthetic-tiny``), its pipeline
    loaded once on ``device``."""
    import torch

    from ..commands import load_pipeline
    from ..synthetic.model import SYNTHETIC_EDIT_SETTINGS, SYNTHETIC_TINY, synthetic_model_path

    require_gradio()
    from .app import AppContext, build_app

    model = model or SYNTHETIC_TINY
    pipe = load_pipeline(model, device)
    synthetic = model == SYNTHETIC_TINY
    if not synthetic:
        try:
            from pathlib import Path

            synthetic = Path(model).expanduser().resolve() == synthetic_model_path().resolve()
        except OSError:
            synthetic = False
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    ctx = AppContext(pipe=pipe, model=model, settings=SYNTHETIC_EDIT_SETTINGS if synthetic else None, device_choices=devices)
    return build_app(ctx), ctx


def launch(model=None, host="127.0.0.1", port=7860, share=False, device=None, block=True):
    """Builds the page and serves it at ``http://host:port`` (``block=False``: returns at once,
    the server runs in a thread; ``blocks.close()`` stops it)."""
    from .app import CSS

    blocks, _ = make_app(model, device)
    blocks.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block, css=CSS)
    return blocks


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``ui`` command."""
    p = subparsers.add_parser(
        "ui",
        help="serve the web app (Gradio; pip install \"aledit[ui]\")",
        description="Serve a web page to edit images, check masks, compare methods side by side and see "
        "cross-attention. Offline by default with the packaged synthetic-tiny model.",
    )
    p.add_argument("--model", default=None, help="hub id or local folder (default: synthetic-tiny, offline)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", choices=("no", "yes"), default="no", help="also open a public Gradio share link (default no)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=_run_ui)
    return p


def _run_ui(args) -> int:
    from ..commands import check_model_arg

    if args.model is not None:
        check_model_arg(args.model)
    require_gradio()
    launch(args.model, args.host, args.port, args.share == "yes", args.device, block=True)
    return 0
