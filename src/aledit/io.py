"""File helpers: atomic image writes and early checks of output locations."""

from __future__ import annotations

import os
import tempfile

from PIL import Image

__all__ = ["check_output_file", "check_writable_dir", "save_image_atomic", "save_text_atomic"]


def check_writable_dir(path: str | os.PathLike) -> None:
    """Raises ``OSError`` with a clear message unless a file can be created next to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OSError(f"output directory does not exist: {directory}")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".aledit-probe-"):
            pass
    except OSError as exc:
        raise OSError(f"output directory is not writable: {directory} ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike) -> None:
    """:func:`check_writable_dir`, and ``path`` must not be an existing directory (renaming a file
    onto it would fail only after all the work)."""
    if os.path.isdir(path):
        raise OSError(f"output path is a directory, not a file name: {os.fspath(path)}")
    check_writable_dir(path)


def _write_atomic(path: str | os.PathLike, suffix: str, write) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, then renames it into
    place, so a reader never sees a half-written file."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".aledit-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Writes ``image`` atomically; the format follows the extension (PNG when unknown)."""
    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    fmt = Image.registered_extensions().get(suffix.lower(), "PNG")
    _write_atomic(path, suffix, lambda f: image.save(f, format=fmt))


def save_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Writes ``text`` (UTF-8) atomically."""
    _write_atomic(path, ".tmp", lambda f: f.write(text.encode("utf-8")))
