"""The web app's logic without a browser (and without Gradio): edits, masks, options, scenes,
scores and a run of two methods on synthetic-tiny."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from aledit.commands import UsageError
from aledit.edits import EditType, parse_edit
from aledit.masks.ops import MaskError
from aledit.methods.registry import available_methods, method_info
from aledit.synthetic.model import SYNTHETIC_EDIT_SETTINGS
from aledit.ui import logic


def test_parse_rows_skips_blank_rows_and_gives_the_cli_messages():
    edits = logic.parse_rows(["cat -> tiger", "  ", None, "dog -> leopard"])
    assert [(e.source, e.target) for e in edits] == [("cat", "tiger"), ("dog", "leopard")]
    with pytest.raises(UsageError, match=r"^malformed edit 'cat tiger': expected 'SOURCE -> TARGET'"):
        logic.parse_rows(["cat tiger"])
    with pytest.raises(UsageError, match="no edits given"):
        logic.parse_rows(["", None])
    with pytest.raises(UsageError, match="'cat' is edited twice"):
        logic.parse_rows(["cat -> tiger", "cat -> lion"])


def test_check_settings_like_the_cli():
    assert logic.check_settings(4.0, 64, None) == (4, 64, 0)
    assert logic.check_settings(None, "", 3) == (None, None, 3)
    with pytest.raises(UsageError, match="--size must be a positive multiple of 8, got 60"):
        logic.check_settings(4, 60, 0)
    with pytest.raises(UsageError, match="--steps must be >= 1, got 0"):
        logic.check_settings(0, 64, 0)


def test_methods_and_their_option_tables():
    assert logic.method_choices() == (*available_methods(), "naive")
    assert logic.resolve_method("naive") == ("ale", {"ore": False, "rgb_cam": False, "background_blend": False})
    for choice in logic.method_choices():
        method, _ = logic.resolve_method(choice)
        rows = logic.option_rows(choice)
        assert [k for k, _ in rows] == list(method_info(method).defaults())
        # the table as shown gives back the defaults (plus the choice's fixed switches)
        assert logic.options_from_rows(choice, rows) == (method, logic.resolve_method(choice)[1])
    # synthetic-tiny's settings are shown as the defaults
    shown = dict(logic.option_rows("ale", SYNTHETIC_EDIT_SETTINGS))
    assert shown["target_guidance"] == "8.0" and shown["eta"] == "0.0"


def test_changed_options_are_typed_and_checked():
    rows = [list(r) for r in logic.option_rows("p2p")]
    for row in rows:
        if row[0] == "cross_replace":
            row[1] = "0.6"
        if row[0] == "local_blend":
            row[1] = "false"
    method, options = logic.options_from_rows("p2p", rows)
    assert method == "p2p" and options == {"cross_replace": 0.6, "local_blend": False}
    bad = [[k, "2.5" if k == "cross_replace" else v] for k, v in logic.option_rows("p2p")]
    with pytest.raises(UsageError, match="^p2p: "):
        logic.options_from_rows("p2p", bad)
    with pytest.raises(UsageError, match="expected true or false"):
        logic.options_from_rows("p2p", [["local_blend", "maybe"]])


def test_masks_from_editor_upload_and_preview():
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    given = np.zeros((64, 64), bool)
    given[10:20, 30:40] = True
    value = logic.editor_value(image, given, 1)
    background = value["background"]
    assert background.shape == (256, 256, 4) and value["layers"] == []  # shown 4x larger
    assert (background[40:80, 120:160, :3] != (10, 20, 30)).all(axis=2).all()  # the mask is blended in
    assert (background[0:40, 0:120, :3] == (10, 20, 30)).all()
    assert logic.painted_mask(value) is None
    assert np.array_equal(logic.object_mask(given, value), given)
    stroke = np.zeros((256, 256, 4), np.uint8)
    stroke[200:210, 0:10] = (230, 25, 75, 255)
    joined = logic.object_mask(given, {"background": background, "layers": [stroke], "composite": None})
    assert joined.shape == (256, 256) and joined.sum() == 40 * 40 + 100
    # an uploaded picture: non-black, non-transparent pixels
    picture = np.zeros((32, 32, 4), np.uint8)
    picture[0:4, 0:8] = (255, 255, 255, 255)
    picture[8:10, 0:8] = (255, 255, 255, 0)
    assert logic.upload_mask(picture).sum() == 32
    assert logic.upload_mask(np.zeros((32, 32, 3), np.uint8)).sum() == 0


def test_masks_for_edit_leaves_missing_masks_empty_for_the_pipeline_to_report():
    edits = [parse_edit("cat -> tiger"), parse_edit("dog -> leopard")]
    mask = np.ones((8, 8), bool)
    assert logic.masks_for_edit(edits, [None, None], [None, None], masks_required=False) is None
    masks = logic.masks_for_edit(edits, [mask, None], [None, None], masks_required=False)
    assert np.array_equal(masks["cat"], mask) and not masks["dog"].any()
    masks = logic.masks_for_edit(edits, [None, None], [None, None], masks_required=True)
    assert set(masks) == {"cat", "dog"} and not any(m.any() for m in masks.values())


def test_scene_edit_for_recovers_the_generated_edit():
    for kind in EditType:
        scene, edit = logic.new_scene(7, 3, kind.value)
        typed = [parse_edit(f"{s} -> {t}") for s, t in edit.pairs]
        found = logic.scene_edit_for(scene, typed)
        assert found is not None and found.pairs == edit.pairs and found.edit_type == edit.edit_type, kind
    scene, edit = logic.new_scene(5, 3, "material")
    assert logic.scene_edit_for(None, edit.edits) is None
    assert logic.scene_edit_for(scene, [parse_edit("ring -> golden ring")]) is None  # not a template
    assert logic.scene_edit_for(scene, [parse_edit("cat -> ring made of dots")]) is None  # not an object
    with pytest.raises(UsageError, match="unknown edit type 'shape'"):
        logic.new_scene(5, 3, "shape")


def test_attention_overlay_is_bright_where_the_word_attends():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    amap = np.zeros((8, 8), np.float32)
    amap[0, 0] = 1.0
    out = np.asarray(logic.attention_overlay(image, amap), np.float32)
    assert out.shape == (256, 256, 3)
    assert out[5, 5].sum() > out[250, 250].sum()


def test_run_two_methods_on_a_scene_scores_each_exactly(tmp_path):
    from aledit.synthetic.demo import run_demo
    from aledit.synthetic.model import load_synthetic_pipeline

    pipe = load_synthetic_pipeline()
    scene, edit = logic.new_scene(5, 3, "material")
    image = Image.fromarray(scene.image)
    edits = logic.parse_rows([f"{s} -> {t}" for s, t in edit.pairs])
    givens = [scene.masks[e.index] for e in edit.objects]
    seen = []
    done = logic.run_methods(
        pipe, image, edits, givens, [None, None], ["ale", "naive"], {}, seed=5, steps=2, size=64,
        scene=scene, settings=SYNTHETIC_EDIT_SETTINGS, out_dir=str(tmp_path), progress=lambda f, t: seen.append(f),
    )
    assert [r.name for r in done.results] == ["ale", "naive"]
    assert done.scene_edit is not None and seen[-1] == pytest.approx(1.0) and len(seen) == 4
    assert [p.split("/")[-1] for p in done.files] == ["comparison.png", "ale.png", "naive.png"]
    assert all(len(r.attention) == 2 for r in done.results)
    rows = logic.score_rows(done.results)
    assert [r[0] for r in rows] == ["ale", "naive"] and all(v == "n/a" or 0 <= float(v) <= 1 for r in rows for v in r[1:])
    # the same edit as `aledit demo` makes: the same scores
    demo = run_demo(tmp_path / "demo.png", 5, "material", pipe=pipe, settings=SYNTHETIC_EDIT_SETTINGS.replace(steps=2))
    for result, name in zip(done.results, ("ALE", "naive")):
        expected = demo.scores[name].as_dict()
        assert all(
            (math.isnan(expected[k]) and math.isnan(result.scores[k])) or expected[k] == result.scores[k]
            for k, _ in logic.SCORE_COLUMNS
        ), name
    # mistakes are one-line UsageErrors before any edit runs
    with pytest.raises(MaskError, match="^mask for 'ring' is empty after resizing to 64x64"):
        logic.run_methods(pipe, image, edits, [None, None], [None, None], ["fpe", "ale"], {}, steps=1, size=64)
    with pytest.raises(UsageError, match="no method chosen"):
        logic.run_methods(pipe, image, edits, givens, [None, None], [], {}, steps=1, size=64)


def test_ui_command_errors_are_one_line(monkeypatch, capsys):
    import sys

    from aledit.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # the ui extra is not installed
    assert main(["ui"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'aledit: error: the web app needs Gradio: pip install "aledit[ui]" (or pip install "gradio>=5")'
    assert main(["ui", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "aledit: error: --port must be in [1, 65535], got 70000"
    assert main(["ui", "--model", "./no-such-model-folder", "--port", "7861"]) == 2
    assert capsys.readouterr().err.strip() == "aledit: error: model folder does not exist: ./no-such-model-folder"


def test_events_that_use_the_pipeline_share_one_queue_of_one():
    pytest.importorskip("gradio")
    from types import SimpleNamespace

    from aledit.ui.app import PIPELINE_QUEUE, AppContext, build_app

    blocks = build_app(AppContext(pipe=SimpleNamespace(device="cpu"), model="synthetic-tiny", settings=SYNTHETIC_EDIT_SETTINGS))
    model_events = [f for f in blocks.fns.values() if f.name in ("on_find", "on_run")]
    assert len(model_events) == 2
    assert all(f.concurrency_id == PIPELINE_QUEUE and f.concurrency_limit == 1 for f in model_events)
    assert blocks._queue.default_concurrency_limit == 1
