"""Atomic writes: the target appears whole or not at all, and no temporary file is left."""

import os

import pytest
from PIL import Image

from aledit.io import check_writable_dir, save_image_atomic, save_text_atomic


def test_save_text_and_image_atomic(tmp_path):
    save_text_atomic("héllo\n", tmp_path / "a.md")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "héllo\n"
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    save_image_atomic(image, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as back:
        assert back.format == "PNG" and back.getpixel((2, 1)) == (10, 20, 30)
    assert sorted(os.listdir(tmp_path)) == ["a.md", "a.png"]


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        def save(self, f, format):
            f.write(b"half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_image_atomic(Broken(), tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_check_writable_dir(tmp_path):
    check_writable_dir(tmp_path / "out.png")
    with pytest.raises(OSError, match="does not exist"):
        check_writable_dir(tmp_path / "missing" / "out.png")


def test_written_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        save_text_atomic("x", tmp_path / "a.md")
        save_image_atomic(Image.new("RGB", (1, 1)), tmp_path / "a.png")
    finally:
        os.umask(old)
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.md", "a.png")} == {0o644}
