"""ALE-Bench: format and loader, generator, resumable sharded runner, report (all on CPU)."""

import argparse
import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aledit.bench import (
    BenchEdit,
    BenchFormatError,
    ImageObjects,
    ObjectSpec,
    ale_bench_root,
    derive_object_lists,
    expected_counts,
    generate_edits,
    load_ale_bench,
    load_benchmark,
    read_edits_jsonl,
    read_objects_json,
    write_benchmark,
    write_edits_jsonl,
    write_objects_json,
)
from aledit.bench.cli import main, register
from aledit.bench.generate import TEMPLATES, render_target
from aledit.bench.methods import (
    CallableMethod,
    MethodSettings,
    MethodSetupError,
    available_methods,
    build_method,
    register_method,
)
from aledit.bench.report import method_labels, write_report
from aledit.bench.runner import Shard, parse_shard, resolve_shard, run_benchmark, select_edits
from aledit.bench.store import read_results, store_files
from aledit.edits import EditType, infer_edit_type
from aledit.metrics import MetricModels

TYPES = list(EditType)

# --------------------------------------------------------------------------- a tiny benchmark

OBJECTS = [
    ImageObjects(
        "street",
        (
            ObjectSpec("red car", "car", ("blue", "green"), ("bus", "truck"), ("gold", "wood")),
            ObjectSpec("tree", "", ("pink", "white"), ("lamp post",), ("glass", "stone")),
            ObjectSpec("house", "", ("yellow",), ("castle", "barn"), ("ice",)),
        ),
    ),
    ImageObjects(
        "table",  # two objects only: no 3-object edits may be drawn
        (
            ObjectSpec("cup", "", ("red", "black"), ("mug", "bowl"), ("paper", "steel")),
            ObjectSpec("book", "", ("navy", "gray"), ("tablet",), ("leather", "gold")),
        ),
    ),
]


def _box_mask(h, w, box):
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Images and masks of OBJECTS in the benchmark layout (one RGBA mask, opaque, as ALE-Bench has)."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    boxes = {
        "street": {"red car": (36, 60, 4, 30), "tree": (4, 40, 40, 60), "house": (6, 30, 6, 34)},
        "table": {"cup": (10, 30, 10, 30), "book": (36, 58, 30, 60)},
    }
    for image, objs in boxes.items():
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{image}.png")
        (root / "masks" / image).mkdir(parents=True)
        for name, box in objs.items():
            mask = Image.fromarray(_box_mask(64, 64, box))
            if name == "tree":
                mask = mask.convert("RGBA")  # alpha 255 everywhere: must be read by grey level
            mask.save(root / "masks" / image / f"{name}_mask.png")
    return root


@pytest.fixture(scope="module")
def tiny_bench(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    edits = generate_edits(OBJECTS, instances=1, seed=0)
    images = {s.image: sources / "images" / f"{s.image}.png" for s in OBJECTS}
    masks = {s.image: {o.name: sources / "masks" / s.image / f"{o.name}_mask.png" for o in s.objects} for s in OBJECTS}
    return write_benchmark(out, edits, images, masks)


def _shift(image, seed):
    """A cheap deterministic 'edit': darkens the image and adds seed-dependent noise."""
    a = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 8, a.shape)
    return Image.fromarray(np.clip(a * 0.8 + noise, 0, 255).astype(np.uint8))


class Counting:
    """Wraps a method and counts its calls (what a resumed run must not repeat)."""

    def __init__(self, method, fail_on=()):
        self.method, self.fail_on, self.calls = method, set(fail_on), []
        self.name, self.config = method.name, method.config

    def __call__(self, image, edits, masks, seed):
        key = tuple((e.source, e.target) for e in edits)
        self.calls.append(key)
        if key in self.fail_on:
            raise RuntimeError("boom: this edit always fails")
        return self.method(image, edits, masks, seed)


def fake(name="fake", **config):
    return CallableMethod(
        name, {"kind": "shift", **config}, lambda image, edits, masks, seed: _shift(image, seed + len(edits))
    )


# --------------------------------------------------------------------------- generator


def test_templates_follow_appendix_b():
    car = ObjectSpec("blue globe", "globe", ("red",), ("bus",), ("gold",))
    assert render_target(car, EditType.COLOR, ["red"]) == "red-colored globe"
    assert render_target(car, EditType.OBJECT, ["bus"]) == "bus"
    assert render_target(car, EditType.MATERIAL, ["gold"]) == "globe made of gold"
    assert render_target(car, EditType.COLOR_OBJECT, ["red", "bus"]) == "red-colored bus"
    assert render_target(car, EditType.OBJECT_MATERIAL, ["bus", "gold"]) == "bus made of gold"
    assert set(TEMPLATES) == set(EditType)


def test_generator_design_counts_uniqueness_and_determinism():
    edits = generate_edits(OBJECTS, instances=3, seed=7)
    counts = Counter((e.image, e.edit_type, e.num_objects) for e in edits)
    assert counts == Counter(expected_counts(OBJECTS, instances=3))
    # 5 types x 3 counts on the 3-object image; never 3 objects on the 2-object image
    assert {k for k in counts if k[0] == "street"} == {("street", t, n) for t in TYPES for n in (1, 2, 3)}
    assert not any(e.image == "table" and e.num_objects == 3 for e in edits)
    assert counts[("street", EditType.COLOR, 1)] == 3
    assert len({e.id for e in edits}) == len(edits)
    for cell in counts:
        sets = [frozenset(e.pairs) for e in edits if (e.image, e.edit_type, e.num_objects) == cell]
        assert len(set(sets)) == len(sets)  # distinct instances
    specs = {(s.image, o.name): o for s in OBJECTS for o in s.objects}
    for e in edits:
        assert e.seed == 42 and len({s for s, _ in e.pairs}) == e.num_objects
        for source, target in e.pairs:
            o = specs[(e.image, source)]
            allowed = set()
            for c in o.colors or ("",):
                for n in o.new_objects or ("",):
                    for m in o.materials or ("",):
                        allowed.add(TEMPLATES[e.edit_type].format(color=c, object=o.noun, new_object=n, material=m))
            assert target in allowed
            if o.noun == o.name:
                assert infer_edit_type(source, target) == e.edit_type or e.edit_type is EditType.OBJECT
    # deterministic, seed-dependent, and adding an image changes no other image's edits
    assert generate_edits(OBJECTS, instances=3, seed=7) == edits
    assert generate_edits(OBJECTS, instances=3, seed=8) != edits
    alone = generate_edits(OBJECTS[:1], instances=3, seed=7)
    assert alone == [e for e in edits if e.image == "street"]


def test_generator_small_attribute_space_gives_every_edit_once(caplog):
    spec = [
        ImageObjects("img", (ObjectSpec("sun", "", ("red", "blue"), (), ()), ObjectSpec("sea", "", ("green",), (), ())))
    ]
    edits = generate_edits(spec, instances=10, seed=0)
    # only color edits are possible: 3 one-object and 2 two-object ones
    assert Counter((e.edit_type, e.num_objects) for e in edits) == {(EditType.COLOR, 1): 3, (EditType.COLOR, 2): 2}
    assert "only 3 distinct 1-object color edits" in caplog.text
    assert "no 1-object material edits" in caplog.text


def test_objects_json_round_trip_defaults_and_errors(tmp_path):
    path = tmp_path / "objects.json"
    write_objects_json(OBJECTS, path)
    assert read_objects_json(path) == OBJECTS
    path.write_text(
        json.dumps(
            {
                "colors": ["red", "blue"],
                "materials": ["gold"],
                "images": {
                    "a": ["sky", {"name": "blue  globe", "noun": "globe", "new_objects": ["ball"], "materials": []}]
                },
            }
        )
    )
    (a,) = read_objects_json(path)
    assert a.objects[0] == ObjectSpec("sky", "", ("red", "blue"), (), ("gold",))
    assert a.objects[1] == ObjectSpec("blue globe", "globe", ("red", "blue"), ("ball",), ())
    path.write_text(json.dumps({"images": {"a": [{"name": "sky", "colour": ["red"]}]}}))
    with pytest.raises(BenchFormatError, match="unknown key.*colour"):
        read_objects_json(path)
    path.write_text(json.dumps({"images": {"a": ["sky", "Sky"]}}))
    with pytest.raises(BenchFormatError, match="twice"):
        read_objects_json(path)


# --------------------------------------------------------------------------- ALE-Bench data


@pytest.fixture(scope="module")
def ale_bench():
    return load_ale_bench()


def test_vendored_ale_bench_loads_as_published(ale_bench):
    root = ale_bench_root()
    assert (root / "LICENSE").is_file() and (root / "NOTICE.md").is_file()
    assert ale_bench.root == root
    assert len(ale_bench.edits) == 3000
    assert len(ale_bench.images) == 20
    assert sum(len(m) for m in ale_bench.masks.values()) == 68
    assert {"blue globe", "orange globe", "box", "cone"} == set(ale_bench.masks["natural_img01"])
    assert len({e.id for e in ale_bench.edits}) == 3000
    cells = Counter((e.image, e.edit_type, e.num_objects) for e in ale_bench.edits)
    assert len(cells) == 20 * 5 * 3 and set(cells.values()) == {10}
    spaced = [e for e in ale_bench.edits if any(" " in s for s in e.sources)]
    assert spaced and all(ale_bench.mask_paths(e)[s].is_file() for e in spaced[:20] for s in e.sources)
    e = ale_bench.edit("natural_img01-1-color-0")
    assert e.seed == 42 and e.edit_type is EditType.COLOR and e.edits[0].edit_type is EditType.COLOR
    with pytest.raises(KeyError, match="no edit 'nope'"):
        ale_bench.edit("nope")


def test_vendored_copy_loads_the_same_by_its_folder(ale_bench, bench_dir):
    by_folder = load_ale_bench(bench_dir)
    assert [e.to_json() for e in by_folder.edits] == [e.to_json() for e in ale_bench.edits]
    assert {k: sorted(v) for k, v in by_folder.masks.items()} == {k: sorted(v) for k, v in ale_bench.masks.items()}


def test_pyproject_ships_the_vendored_data():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"bench/data/**/*"' in text


def test_generator_reproduces_the_published_structure(ale_bench):
    objects = derive_object_lists(ale_bench)
    assert len(objects) == 20
    globes = {o.name: o for o in next(s for s in objects if s.image == "natural_img01").objects}
    assert globes["blue globe"].noun == "globe" and globes["box"].noun == "box"
    # every published target is in the derived dictionaries of its object
    for spec in objects:
        for o in spec.objects:
            assert o.colors and o.new_objects and o.materials
    generated = generate_edits(objects, instances=10, max_objects=3, seed=0)
    assert len(generated) == 3000
    key = lambda e: (e.image, e.edit_type, e.num_objects)
    assert Counter(map(key, generated)) == Counter(map(key, ale_bench.edits))
    used = {(e.image, s) for e in ale_bench.edits for s in e.sources}
    assert {(e.image, s) for e in generated for s in e.sources} <= used


# --------------------------------------------------------------------------- format


def test_edits_jsonl_round_trip_and_errors(tmp_path, tiny_bench):
    path = tmp_path / "edits.jsonl"
    write_edits_jsonl(tiny_bench.edits, path)
    assert read_edits_jsonl(path) == list(tiny_bench.edits)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"id", "image", "edits", "type", "objects", "seed"}
    path.write_text('{"id": "x", "image": "a", "edits": [["cat", "dog"]], "type": "colour"}\n')
    with pytest.raises(BenchFormatError, match=r"edits.jsonl:1: unknown type 'colour'"):
        read_edits_jsonl(path)
    path.write_text('{"id": "x", "image": "a", "edits": [["cat", "dog"]], "type": "object", "objects": 2}\n')
    with pytest.raises(BenchFormatError, match="'objects' is 2 but there are 1 pairs"):
        read_edits_jsonl(path)
    with pytest.raises(BenchFormatError, match="appears twice"):
        BenchEdit("x", "a", (("cat", "dog"), ("cat", "cow")), EditType.OBJECT)


def test_load_benchmark_names_what_is_missing(tmp_path, tiny_bench):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bench.root, copy)
    os.remove(copy / "masks" / "street" / "red car_mask.png")
    with pytest.raises(BenchFormatError, match=r"no mask .*street.*red car_mask\.png"):
        load_benchmark(copy)
    with pytest.raises(BenchFormatError, match="benchmark folder not found"):
        load_benchmark(tmp_path / "nothing")


# --------------------------------------------------------------------------- CLI: generate


def test_cli_generate_writes_a_loadable_benchmark(tmp_path, sources, capsys):
    objects = tmp_path / "objects.json"
    write_objects_json(OBJECTS, objects)
    out = tmp_path / "gen"
    argv = [
        "generate",
        str(out),
        "--objects",
        str(objects),
        "--images",
        str(sources / "images"),
        "--masks",
        str(sources / "masks"),
        "--instances",
        "2",
    ]
    assert main(argv) == 0
    bench = load_benchmark(out)
    assert Counter((e.image, e.edit_type, e.num_objects) for e in bench.edits) == Counter(
        expected_counts(OBJECTS, instances=2)
    )
    assert read_objects_json(out / "objects.json") == OBJECTS
    assert "wrote 50 edits for 2 images" in capsys.readouterr().out
    # a second time into the same folder is refused, nothing changes
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    # a missing mask is named, nothing written
    spec = [ImageObjects("street", (ObjectSpec("moon", "", ("red",)),))]
    write_objects_json(spec, objects)
    argv[1] = str(tmp_path / "gen2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aledit: error: no mask for object 'moon'") and err.count("\n") == 1
    assert not (tmp_path / "gen2").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".gen2")]


def test_register_adds_bench_subcommands():
    parser = argparse.ArgumentParser(prog="aledit")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["bench", "run", "ale-bench", "--out", "runs/x", "--shard", "1/2", "--no-bb"])
    assert args.run.__name__ == "_run_run" and args.shard == "1/2" and args.no_bb and args.method == "ale"
    assert parser.parse_args(["bench", "report", "a", "b", "--out", "r"]).run.__name__ == "_run_report"
    assert parser.parse_args(["bench", "generate", "o", "--objects", "ale-bench"]).run.__name__ == "_run_generate"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--shard", "2/2"], "malformed shard '2/2'"),
        (["--size", "63"], "--size must be a positive multiple of 8"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--no-ore", "--self-replace", "3"], "--self-replace must be in [0, 1]"),
        (["--method", "magic"], "unknown method 'magic'; available: ale, p2p, masactrl, fpe, infedit"),
        (["--method", "p2p", "--no-ore"], "method 'p2p' takes no option 'ore' (an option of ale)"),
        (["--method", "infedit", "--option", "cross_replace=2"], "cross_replace must be in [0, 1]"),
    ],
)
def test_cli_run_mistakes_are_one_line(tmp_path, capsys, extra, message):
    argv = [
        "run",
        "ale-bench",
        "--model",
        "tiny-random",
        "--out",
        str(tmp_path / "run"),
        "--no-metrics",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aledit: error: ") and message in err and err.count("\n") == 1


def test_cli_run_unknown_benchmark(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--no-metrics"]) == 2
    assert "benchmark folder not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- methods


def test_method_registry(monkeypatch):
    from aledit.bench import methods

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))  # registrations stay in this test
    assert "ale" in available_methods()

    @register_method("test-shift")
    def build(settings):
        return fake("test-shift", steps=settings.steps)

    assert build_method("test-shift", MethodSettings(steps=3)).config == {"kind": "shift", "steps": 3}
    with pytest.raises(MethodSetupError, match="unknown method 'no-such'; available: .*ale"):
        build_method("no-such", MethodSettings())
    with pytest.raises(MethodSetupError, match="takes no option 'colour'"):
        build_method("ale", MethodSettings(model="tiny-random", options={"colour": 1}))
    with pytest.raises(ValueError, match="already registered"):
        register_method("test-shift", lambda s: None)


# --------------------------------------------------------------------------- runner


def test_shards_parse_compose_and_partition(tiny_bench):
    assert parse_shard("1/4") == Shard(1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="malformed shard"):
            parse_shard(bad)
    assert resolve_shard(None, {}) == (Shard(0, 1), 0)
    assert resolve_shard(None, {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == (Shard(2, 4), 0)
    assert resolve_shard(Shard(1, 2), {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == (Shard(3, 4), 1)
    with pytest.raises(ValueError, match="RANK must be in"):
        resolve_shard(None, {"WORLD_SIZE": "2", "RANK": "2"})
    ids = [e.id for e in select_edits(tiny_bench, limit=7)]
    parts = [[e.id for e in select_edits(tiny_bench, Shard(i, 3), limit=7)] for i in range(3)]
    assert sorted(i for part in parts for i in part) == sorted(ids) and len(ids) == 7


def test_two_shards_cover_every_edit_once_with_metrics(tmp_path, tiny_bench):
    run = tmp_path / "run"
    method = Counting(fake())
    for i in range(2):
        summary = run_benchmark(
            tiny_bench, method, run, shard=Shard(i, 2), metric_models=MetricModels(), progress=False
        )
        assert summary.failed == 0 and summary.store.name == f"results-rank{i}.sqlite"
    assert [p.name for p in store_files(run)] == ["results-rank0.sqlite", "results-rank1.sqlite"]
    rows = read_results([run])
    assert sorted(r.edit_id for r in rows) == sorted(e.id for e in tiny_bench.edits)
    assert len(method.calls) == len(tiny_bench.edits)
    for r in rows:
        assert r.status == "ok" and Path(r.output).is_file() and r.method == "fake"
        assert 0 < r.metric("bg_mse") < 1 and math.isfinite(r.metric("bg_psnr")) and 0 < r.metric("bg_ssim") < 1
        assert math.isnan(r.metric("te_leakage"))  # no CLIP model: NaN, stored as NULL
    # with both shards done, a plain run (all edits, one rank) has nothing left to do
    again = run_benchmark(tiny_bench, method, run, progress=False)
    assert again.skipped == len(tiny_bench.edits) and again.done == 0 and len(method.calls) == len(tiny_bench.edits)


def test_failing_edit_is_recorded_and_the_run_goes_on(tmp_path, tiny_bench):
    edits = select_edits(tiny_bench, limit=4)
    method = Counting(fake(), fail_on={edits[1].pairs})
    summary = run_benchmark(tiny_bench, method, tmp_path, limit=4, progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    rows = {r.edit_id: r for r in read_results([tmp_path])}
    bad = rows[edits[1].id]
    assert bad.status == "error" and bad.error == "RuntimeError: boom: this edit always fails" and bad.output is None
    assert all(rows[e.id].status == "ok" for e in edits if e is not edits[1])
    # a failed edit counts as stored; --retry-failed tries it again
    run_benchmark(tiny_bench, method, tmp_path, limit=4, progress=False)
    assert len(method.calls) == 4
    method.fail_on = set()
    summary = run_benchmark(tiny_bench, method, tmp_path, limit=4, retry_failed=True, progress=False)
    assert (summary.done, summary.failed, len(method.calls)) == (1, 0, 5)
    assert {r.status for r in read_results([tmp_path])} == {"ok"}
    assert len(read_results([tmp_path])) == 4


def test_tiny_ale_run_resume_after_sigkill(tmp_path, tiny_bench):
    """A run killed with SIGKILL mid-way, then started again: nothing stored is recomputed,
    nothing is missing, nothing is duplicated."""
    run, limit = tmp_path / "run", 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [
        sys.executable,
        "-m",
        "aledit.bench",
        "run",
        str(tiny_bench.root),
        "--model",
        "tiny-random",
        "--size",
        "64",
        "--steps",
        "2",
        "--out",
        str(run),
        "--limit",
        str(limit),
        "--no-metrics",
        "--no-progress",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = run / "results-rank0.sqlite"
    deadline = time.monotonic() + 120

    def stored() -> int:
        db = sqlite3.connect(store, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0
        finally:
            db.close()

    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if store.is_file() and stored() >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = {r.edit_id: r for r in read_results([run])}
    assert 2 <= len(before) < limit
    stamps = {i: (r.created_at, os.stat(r.output).st_mtime_ns) for i, r in before.items()}

    method = Counting(build_method("ale", MethodSettings(model="tiny-random", steps=2, size=64)))
    summary = run_benchmark(tiny_bench, method, run, limit=limit, progress=False)
    assert summary.skipped == len(before) and summary.done == limit - len(before) and summary.failed == 0
    assert len(method.calls) == limit - len(before)  # stored edits were not recomputed
    rows = read_results([run])
    ids = [r.edit_id for r in rows]
    assert sorted(ids) == sorted(e.id for e in select_edits(tiny_bench, limit=limit))  # none missing, none twice
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT edit_id) FROM results").fetchone() == (limit, limit)
    for r in rows:
        assert r.status == "ok" and Image.open(r.output).size == (64, 64)
        if r.edit_id in stamps:
            assert stamps[r.edit_id] == (r.created_at, os.stat(r.output).st_mtime_ns)
    # a row whose image was lost is not done: only that edit is computed again
    lost = rows[0]
    os.remove(lost.output)
    summary = run_benchmark(tiny_bench, method, run, limit=limit, progress=False)
    assert summary.done == 1 and method.calls[-1] == lost.pairs and Path(lost.output).is_file()
    assert len(read_results([run])) == limit


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def tiny_metric_models(tiny_clip, tiny_dino):
    return MetricModels(clip=tiny_clip, dino=tiny_dino)


def test_report_tables_chart_and_gallery(tmp_path, tiny_bench, tiny_metric_models, capsys):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    street = tiny_bench.subset(e for e in tiny_bench.edits if e.image == "street")  # every type, 1-3 objects
    limit = len(street.edits)
    run_benchmark(street, fake(bb=True), run_a, metric_models=tiny_metric_models, progress=False)
    run_benchmark(street, fake(bb=False), run_b, metric_models=MetricModels(), progress=False)
    failing = street.edits[0]
    run_benchmark(street, Counting(fake("other"), fail_on={failing.pairs}), run_b, limit=2, progress=False)
    ale = build_method("ale", MethodSettings(model="tiny-random", steps=2, size=64))
    run_benchmark(street, ale, run_a, limit=2, metric_models=tiny_metric_models, progress=False)
    rows = read_results([run_a, run_b])
    assert len(rows) == 2 * limit + 2 + 2
    labels = sorted(set(method_labels(rows).values()))
    assert labels == ["ale", "fake (bb=off)", "fake (bb=on)", "other"]

    out = tmp_path / "report"
    gallery = [failing.id, street.edits[-1].id]
    assert main(["report", str(run_a), str(run_b), "--out", str(out), "--gallery", ",".join(gallery)]) == 0
    assert "wrote report.md" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    for title in (
        "Table 1. By method",
        "Table 2. By edit type",
        "Table 3. By number of edited objects",
        "Failed edits",
    ):
        assert title in md
    assert "| fake (bb=on) | Color |" in md and "| fake (bb=off) | Object+Material |" in md and "| other | 1 |" in md
    assert "TE Leakage CS ↓ | TI Leakage CS ↓ | SD ↓ | Edited CS ↑ | PSNR ↑ | LPIPS ↓ | MSE ↓ | SSIM ↑ | PSNR ∞ |" in md
    assert "| other | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0 | 1 | 1 |" in md  # no metrics asked

    with open(out / "table1_by_method.csv") as f:
        t1 = list(csv.DictReader(f))
    assert [r["method"] for r in t1] == labels
    on = next(r for r in t1 if r["method"] == "fake (bb=on)")
    assert on["n"] == str(limit) and on["failed"] == "0"
    for key in ("te_leakage", "ti_leakage", "structure_distance", "edited_clip", "bg_psnr", "bg_mse", "bg_ssim"):
        assert math.isfinite(float(on[key])), key
    assert math.isnan(float(on["bg_lpips"])) and on["bg_lpips_n"] == "0"
    assert float(on["bg_psnr_low"]) <= float(on["bg_psnr"]) <= float(on["bg_psnr_high"]) and on["bg_psnr_n"] == str(limit)
    ale_row = next(r for r in t1 if r["method"] == "ale")
    assert (ale_row["n"], ale_row["failed"]) == ("2", "0")
    assert math.isfinite(float(ale_row["edited_clip"])) and 0 < float(ale_row["bg_mse"]) < 1
    other = next(r for r in t1 if r["method"] == "other")
    assert (other["n"], other["failed"]) == ("1", "1") and math.isnan(float(other["bg_mse"]))  # no metrics asked
    with open(out / "table2_by_edit_type.csv") as f:
        t2 = list(csv.DictReader(f))
    assert {(r["method"], r["edit_type"]) for r in t2 if r["method"].startswith("fake")} == {
        (m, t.value) for m in labels[1:3] for t in EditType
    }
    with open(out / "table3_by_object_count.csv") as f:
        t3 = list(csv.DictReader(f))
    on3 = {r["objects"]: r for r in t3 if r["method"] == "fake (bb=on)"}
    assert set(on3) == {"1", "2", "3"} and math.isnan(float(on3["1"]["ti_leakage"]))
    assert math.isfinite(float(on3["2"]["ti_leakage"]))
    assert sum(int(r["n"]) for r in on3.values()) == limit
    with open(out / "rows.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)

    for name in ("metrics.png", "gallery.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 200 and im.height > 100
    with Image.open(out / "gallery.png") as im:
        assert im.height > 2 * 192  # one strip per requested edit


def test_report_mistakes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results in" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "--out DIR" in capsys.readouterr().err
    (tmp_path / "empty" / "results-rank0.sqlite").write_text("not a database")
    for argv in (
        ["report", str(tmp_path / "empty")],
        ["run", "ale-bench", "--out", str(tmp_path / "empty"), "--no-metrics"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "results-rank0.sqlite is not a readable results store" in err and err.count("\n") == 1


def test_report_unknown_gallery_id(tmp_path, tiny_bench, capsys):
    run_benchmark(tiny_bench, fake(), tmp_path / "run", limit=1, progress=False)
    assert main(["report", str(tmp_path / "run"), "--gallery", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no results for edit 'nope'" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "report").exists()  # validated before anything is written
    (tmp_path / "mine").mkdir()
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "mine"), "--gallery", "nope"]) == 2
    assert os.listdir(tmp_path / "mine") == []


def test_metrics_missing_from_a_no_metrics_run_are_computed_later_without_re_editing(
    tmp_path, tiny_bench, tiny_metric_models
):
    method = Counting(fake())
    first = run_benchmark(tiny_bench, method, tmp_path, limit=3, progress=False)  # like --no-metrics
    assert (first.done, first.evaluated) == (3, 0)
    assert all(math.isnan(r.metric("whole_clip")) for r in read_results([tmp_path]))
    report = write_report([tmp_path], tmp_path / "report")
    assert "**3 of 3 results have no metrics**" in report.markdown.read_text()
    before = {r.edit_id: Path(r.output).read_bytes() for r in read_results([tmp_path])}

    again = run_benchmark(tiny_bench, method, tmp_path, limit=3, metric_models=tiny_metric_models, progress=False)
    assert (again.skipped, again.done, again.evaluated, again.failed) == (3, 0, 3, 0)
    assert len(method.calls) == 3  # no edit redone
    rows = read_results([tmp_path])
    assert len(rows) == 3 and all(np.isfinite(r.metric("whole_clip")) for r in rows)
    assert {r.edit_id: Path(r.output).read_bytes() for r in rows} == before
    # the metrics equal those of a run that computed them at once
    fresh = tmp_path / "fresh"
    run_benchmark(tiny_bench, fake(), fresh, limit=3, metric_models=tiny_metric_models, progress=False)
    expected = {r.edit_id: r.metrics for r in read_results([fresh])}
    assert {r.edit_id: dict(r.metrics) for r in rows} == {k: dict(v) for k, v in expected.items()}
    third = run_benchmark(tiny_bench, method, tmp_path, limit=3, metric_models=tiny_metric_models, progress=False)
    assert (third.evaluated, third.done) == (0, 0)
    assert "have no metrics" not in write_report([tmp_path], tmp_path / "report").markdown.read_text()


def test_cli_run_exits_non_zero_when_edits_failed(tmp_path, capsys, monkeypatch):
    from aledit.bench import methods

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    failing = {"on": True}

    def edit(image, edits, masks, seed):
        if failing["on"]:
            raise RuntimeError("boom")
        return image

    register_method("test-fails", lambda settings: CallableMethod("test-fails", {}, edit))
    argv = ["run", "ale-bench", "--method", "test-fails", "--limit", "2", "--out", str(tmp_path / "run"),
            "--no-metrics", "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "0 done now, 2 failed" in captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("aledit: error: 2 of 2 edits failed (first: ") and "--retry-failed" in last
    assert main(argv) == 1  # still failed (stored), still says so
    assert "2 of 2 edits failed" in capsys.readouterr().err
    failing["on"] = False
    assert main([*argv, "--retry-failed"]) == 0
    assert "2 done now, 0 failed" in capsys.readouterr().out
