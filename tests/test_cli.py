import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aledit.cli import main


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    m = np.zeros((40, 60), np.uint8)
    m[5:30, 5:25] = 255
    Image.fromarray(m).save(tmp_path / "wolf.png")
    dot = np.zeros((1000, 1000), np.uint8)
    dot[3, 3] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def args(d, *extra, edit="wolf -> pink-colored wolf", mask="wolf={d}/wolf.png", out="{d}/out.png", image="{d}/img.png"):
    a = [ "edit", image.format(d=d), "--out", out.format(d=d), "--model", "tiny-random", "--size", "64", "--steps", "2"]
    if edit:
        a += ["--edit", edit]
    if mask:
        a += ["--mask", mask.format(d=d)]
    return a + list(extra)


def leftovers(d):
    return sorted(p for p in os.listdir(d) if p.startswith("out") or p.startswith(".aledit"))


def test_edit_writes_the_image_and_a_side_by_side(files, capsys):
    assert main(args(files, "--side-by-side")) == 0
    out = Image.open(files / "out.png")
    assert out.size == (60, 40)
    side = Image.open(files / "out_side_by_side.png")
    assert side.height > 40 and side.width > 3 * 60
    assert leftovers(files) == ["out.png", "out_side_by_side.png"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case,kw,extra,message",
    [
        ("missing image", dict(image="{d}/nope.png"), (), "image not found"),
        ("unreadable image", dict(image="{d}/broken.jpg"), (), "image is not readable"),
        ("malformed edit", dict(edit="wolf pink wolf"), (), "malformed edit"),
        ("malformed mask", dict(mask="wolf.png"), (), "malformed --mask"),
        ("mask missing for object", dict(mask="moon={d}/wolf.png"), (), "no --mask for 'wolf'"),
        ("mask file missing", dict(mask="wolf={d}/none.png"), (), "mask file for 'wolf' not found"),
        ("mask empty after resize", dict(mask="wolf={d}/dot.png"), (), "empty after resizing"),
        ("phrase not in prompt", {}, ("--prompt", "a dog on a hill"), "does not occur in the prompt"),
        ("prompt too long", dict(edit="wolf -> wolf made of " + "shiny " * 80 + "gold"), (), "at most 77"),
        ("zero edits", dict(edit=None), (), "no edits given"),
        ("output directory missing", dict(out="{d}/no/such/dir/out.png"), (), "does not exist"),
        ("output directory not writable", dict(out="/proc/out.png"), (), "not writable"),
        ("bad size", {}, ("--size", "60"), "multiple of 8"),
        ("bad schedule", {}, ("--self-replace", "2"), "--self-replace"),
    ],
)
def test_bad_input_is_one_clear_line(files, capsys, case, kw, extra, message):
    code = main(args(files, *extra, **kw))
    err = capsys.readouterr().err
    assert code == 2, case
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aledit: error: ") and message in lines[0], err
    assert leftovers(files) == []


def test_console_script_reports_without_traceback(files):
    proc = subprocess.run(
        [sys.executable, "-m", "aledit.cli", *args(files, image="{d}/nope.png")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "image not found" in proc.stderr
