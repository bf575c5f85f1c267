"""File helpers: atomic writes, early checks of output locations, output folders that vanish
again when a command fails before writing into them, and the clean-up of temporary files a
killed process left behind.

Temporary files are named ``.aledit-<host>-<pid>-<random><suffix>`` beside their destination;
:func:`remove_stale_temp_files` deletes those whose process is gone (same host) or that are
older than :data:`STALE_TEMP_SECONDS` (any host, e.g. a shared run folder), never a live
writer's file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence

from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "OutputsInterrupted",
    "check_output_dir",
    "check_output_file",
    "check_output_image",
    "check_writable_dir",
    "file_mode",
    "output_dir",
    "remove_stale_temp_files",
    "save_image_atomic",
    "save_outputs",
    "save_text_atomic",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Extensions an output image may have (the format follows the extension)."""

TEMP_PREFIX = ".aledit-"
STALE_TEMP_SECONDS = 3600.0
"""Age after which a temporary file of another host (whose process cannot be checked) is stale."""


class OutputsInterrupted(KeyboardInterrupt):
    """Ctrl-C while a command wrote its outputs: ``written`` lists the files already in place
    (each complete, as every write is atomic)."""

    def __init__(self, written: Sequence[str]):
        super().__init__()
        self.written = list(written)


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike, *, max_age_s: float = STALE_TEMP_SECONDS) -> list[str]:
    """Deletes the ``.aledit-*`` temporary files in ``directory`` that no live process is writing:
    this host's files whose process has ended, and any file older than ``max_age_s``. Returns
    the deleted paths."""
    removed = []
    host, now = _host(), time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        parts = entry.name[len(TEMP_PREFIX):].split("-")
        stale = False
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit():
            pid = int(parts[1])
            stale = pid != os.getpid() and not _pid_alive(pid)
        if not stale:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
            except OSError:
                continue
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def check_writable_dir(path: str | os.PathLike) -> None:
    """Raises ``OSError`` with a clear message unless a file can be created next to ``path``;
    deletes stale temporary files a killed run left there."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OSError(f"output directory does not exist: {directory}")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=_temp_prefix() + "probe-"):
            pass
    except OSError as exc:
        raise OSError(f"output directory is not writable: {directory} ({exc.strerror or exc})") from None
    remove_stale_temp_files(directory)


def check_output_file(path: str | os.PathLike) -> None:
    """:func:`check_writable_dir`, and ``path`` must not be an existing directory (renaming a file
    onto it would fail only after all the work)."""
    if os.path.isdir(path):
        raise OSError(f"output path is a directory, not a file name: {os.fspath(path)}")
    check_writable_dir(path)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_image(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out") -> None:
    """An image to write: an image extension (:data:`IMAGE_EXTENSIONS`), not an existing folder,
    not one of the command's ``inputs``, in a writable folder; ``OSError`` otherwise."""
    if os.path.isdir(path):
        raise OSError(f"output path is a directory, not a file name: {os.fspath(path)}")
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise OSError(
            f"{flag} {os.fspath(path)!r}: unsupported image extension {ext or '(none)'!r}; "
            f"use one of {', '.join(IMAGE_EXTENSIONS)}"
        )
    for source in inputs:
        if _same_file(path, source):
            raise OSError(f"{flag} {os.fspath(path)!r} is an input of this command; choose another file name")
    check_output_file(path)


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """A folder to write into: not an existing file, and creatable (its nearest existing parent
    is a writable folder); ``OSError`` otherwise. Creates nothing."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise OSError(f"{flag} {path} is a file, not a folder")
        check_writable_dir(os.path.join(path, "probe"))
        return
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OSError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"{flag} {path}: cannot create it, {parent} is not writable")


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[str]:
    """Creates folder ``path`` (and missing parents) for the ``with`` block; when the block raises
    (an error, Ctrl-C), the folders it created are removed again if they are still empty, so a
    failed command leaves no empty folder behind."""
    path = os.path.abspath(os.fspath(path))
    created, p = [], path
    while not os.path.exists(p):
        created.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only succeeds while empty
        raise


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file: ``0o666`` minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(path: str | os.PathLike, suffix: str, write) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, then renames it into
    place, so a reader never sees a half-written file."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=_temp_prefix(), suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


write_atomic = _write_atomic


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Writes ``image`` atomically; the format follows the extension (PNG when unknown)."""
    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    fmt = Image.registered_extensions().get(suffix.lower(), "PNG")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    _write_atomic(path, suffix, lambda f: image.save(f, format=fmt))


def save_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Writes ``text`` (UTF-8) atomically."""
    _write_atomic(path, ".tmp", lambda f: f.write(text.encode("utf-8")))


def save_outputs(outputs: Sequence[tuple[object, str | os.PathLike]]) -> list[str]:
    """Writes ``(image | text, path)`` pairs atomically, in order; returns the paths. Ctrl-C
    midway raises :class:`OutputsInterrupted` naming the files already written."""
    written: list[str] = []
    try:
        for content, path in outputs:
            if isinstance(content, str):
                save_text_atomic(content, path)
            else:
                save_image_atomic(content, path)
            written.append(os.fspath(path))
    except KeyboardInterrupt:
        raise OutputsInterrupted(written) from None
    return written
