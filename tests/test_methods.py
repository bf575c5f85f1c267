"""The method registry, its options and the CLI's one-line errors for every method."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.cli import main
from aledit.masks import MaskError
from aledit.methods import ALEConfig, ALEMethod, MethodError, available_methods, make_method, method_info
from aledit.methods.base import MASKS_OPTIONAL, MASKS_REQUIRED, MASKS_UNUSED, EditMethod
from aledit.methods.registry import make_config, parse_options

EXPECTED = ("ale", "p2p", "masactrl", "fpe", "infedit")


def test_every_method_is_registered_with_its_paper_defaults():
    assert set(EXPECTED) <= set(available_methods())
    assert available_methods()[: len(EXPECTED)] == EXPECTED  # the README's order
    for name in available_methods():
        info = method_info(name)
        assert info.name == name and info.title and info.paper and info.summary
        assert info.default_steps >= 1 and info.default_size % 8 == 0
        assert info.masks in (MASKS_REQUIRED, MASKS_OPTIONAL, MASKS_UNUSED)
        method = make_method(name)
        assert isinstance(method, EditMethod) and method.name == name
        assert dataclasses.is_dataclass(method.config) and method.config.__dataclass_params__.frozen
    assert method_info("ale").default_model == "SimianLuo/LCM_Dreamshaper_v7"
    assert method_info("infedit").default_model == "SimianLuo/LCM_Dreamshaper_v7"
    for sd in ("p2p", "masactrl", "fpe"):
        assert "stable-diffusion-v1" in method_info(sd).default_model


def test_make_method_and_options():
    assert make_method("ale").config == ALEConfig()
    assert make_method("ale", rgb_cam=False).config == ALEConfig(rgb_cam=False)
    assert make_method("ale", ALEConfig(ore=False)).config.ore is False
    obj = ALEMethod(ALEConfig())
    assert make_method(obj) is obj
    with pytest.raises(MethodError, match="unknown method 'nope'; available: ale"):
        make_method("nope")
    with pytest.raises(MethodError, match=r"method 'ale' takes no option 'cross_replace' \(an option of .*p2p"):
        make_method("ale", cross_replace=0.5)
    with pytest.raises(MethodError, match="takes a P2PConfig, got ALEConfig"):
        make_method("p2p", ALEConfig())
    with pytest.raises(MethodError, match=r"self_replace must be in \[0, 1\], got 1.5"):
        make_config("ale", {"self_replace": 1.5})
    with pytest.raises(MethodError, match="must be finite"):
        make_config("ale", {"target_guidance": float("nan")})


def test_parse_options_types():
    opts = parse_options("ale", ["rgb_cam=false", "self-replace=0.25", "eta=0", "guidance=embedded"])
    assert opts == {"rgb_cam": False, "self_replace": 0.25, "eta": 0.0, "guidance": "embedded"}
    assert parse_options("ale", ["self_replace=none"]) == {"self_replace": None}
    for bad, message in [
        (["rgb_cam=maybe"], "expected true or false"),
        (["eta=inf"], "finite"),
        (["eta"], "malformed --option"),
        (["colour=red"], "takes no option 'colour'"),
    ]:
        with pytest.raises(MethodError, match=message):
            parse_options("ale", bad)


def _scene(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("name", EXPECTED)
def test_cli_bad_options_are_one_line_errors(name, tmp_path, capsys):
    image = _scene(tmp_path)
    base = ["edit", image, "--edit", "cat -> tiger", "--out", str(tmp_path / "o.png"), "--method", name,
            "--model", "tiny-random", "--size", "64", "--steps", "2"]
    defaults = method_info(name).defaults()
    other = "ore" if name != "ale" else "cross_replace"
    cases = [["--option", "no_such_option=1"], ["--option", f"{other}=1"]]
    windows = [k for k in ("self_replace", "cross_replace", "start_blend") if k in defaults]
    cases += [["--option", f"{k}=1.5"] for k in windows] + [["--option", f"{k}=-0.1"] for k in windows]
    guidance = [k for k in ("guidance", "target_guidance") if isinstance(defaults.get(k), float)]
    cases += [["--option", f"{k}=nan"] for k in guidance]
    assert len(cases) >= 3
    for extra in cases:
        code, err = _cli_error(capsys, base + extra)
        assert code == 2, (extra, err)
        assert err.startswith("aledit: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()
    code, err = _cli_error(capsys, base[:-8] + ["--method", "magic"])
    assert code == 2 and "unknown method 'magic'" in err


def test_cli_lists_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert f"| {name} |" in out
    assert main(["methods", "p2p"]) == 0
    assert "cross_replace = " in capsys.readouterr().out
    assert main(["methods", "nope"]) == 2


def test_ale_alias_and_required_masks():
    from aledit import ALEEditPipeline, EditPipeline

    pipe = ALEEditPipeline.from_pretrained("tiny-random")
    assert isinstance(pipe, EditPipeline)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    old = pipe.edit(image, ["cat -> tiger"], {"cat": mask}, config=ALEConfig(), size=64, steps=2, progress=False)
    new = EditPipeline.edit(pipe, image, ["cat -> tiger"], {"cat": mask}, method="ale", size=64, steps=2, progress=False)
    assert old.method == new.method == "ale"
    assert torch.equal(old.latents.target_x0, new.latents.target_x0)
    with pytest.raises(MaskError, match="method 'ale' needs a mask per object"):
        pipe.edit(image, ["cat -> tiger"], None, size=64, steps=2, progress=False)


def test_inversion_cache_is_shared_by_methods_and_exact(tmp_path):
    """P2P with DDIM inversion and FPE (same source prompt, same steps) invert once; a cached
    inversion gives the same edit bit for bit, and a different image is a different key."""
    from aledit import EditPipeline

    pipe = EditPipeline.from_pretrained("tiny-random")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kw = dict(size=64, steps=3, progress=False, inversion_cache=tmp_path / "inv")
    first = pipe.edit(image, ["cat -> tiger"], method="p2p", options={"null_text": False}, **kw)
    assert first.extras["inversion_stats"] == {"forward": 3, "backward": 0}
    again = pipe.edit(image, ["cat -> tiger"], method="p2p", options={"null_text": False}, **kw)
    assert again.extras["inversion_stats"] == {}  # loaded from the cache
    assert torch.equal(first.latents.target_x0, again.latents.target_x0)
    fpe = pipe.edit(image, ["cat -> tiger"], method="fpe", **kw)
    assert fpe.extras["inversion_stats"] == {}  # the same inversion
    other = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert pipe.edit(other, ["cat -> tiger"], method="fpe", **kw).extras["inversion_stats"]["forward"] == 3


def test_bench_runs_a_baseline(tmp_path, capsys):
    """`aledit bench run --method p2p` on two ALE-Bench edits with the tiny model, then resumes."""
    from aledit.cli import main as cli

    argv = ["bench", "run", "ale-bench", "--method", "p2p", "--model", "tiny-random", "--size", "64", "--steps", "2",
            "--limit", "2", "--no-metrics", "--no-progress", "--out", str(tmp_path / "run"),
            "--option", "null_text=false"]
    assert cli(argv) == 0
    assert "2 done now" in capsys.readouterr().out
    assert len(list((tmp_path / "run" / "inversions").iterdir())) >= 1
    assert cli(argv) == 0
    assert "2 already done, 0 done now" in capsys.readouterr().out


def test_an_existing_directory_as_output_is_refused_before_any_work(tmp_path, capsys):
    image = _scene(tmp_path)
    for argv in (
        ["edit", image, "--edit", "cat -> tiger", "--out", str(tmp_path), "--method", "p2p", "--model", "tiny-random"],
        ["demo", "--out", str(tmp_path)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("aledit: error: output path is a directory") and err.count("\n") == 1
