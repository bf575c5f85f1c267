"""Structure distance: the resize before DINO antialiases by default; ``antialias=False`` is
PIE-Bench's torchvision 0.13 behaviour, also reachable from ``aledit bench run``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aledit.metrics import MetricModels, evaluate_edit
from aledit.metrics.structure import dino_pixel_values, structure_distance

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def image(seed, hw=(300, 300)):
    return np.random.RandomState(seed).randint(0, 256, (*hw, 3), dtype=np.uint8)


@pytest.mark.parametrize("antialias", [True, False])
def test_dino_pixels_resize_with_or_without_antialias(antialias):
    img = image(0)
    x = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]
    resized = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=antialias)
    torch.testing.assert_close(dino_pixel_values(img, antialias=antialias), (resized - MEAN) / STD)


def test_default_is_antialiased_and_the_switch_changes_the_distance(tiny_dino):
    img = image(0)
    assert torch.equal(dino_pixel_values(img), dino_pixel_values(img, antialias=True))
    assert not torch.allclose(dino_pixel_values(img), dino_pixel_values(img, antialias=False))
    a, b = image(1), image(2)
    default = structure_distance(tiny_dino, a, b)
    assert default == structure_distance(tiny_dino, a, b, antialias=True)
    pie_bench = structure_distance(tiny_dino, a, b, antialias=False)
    assert pie_bench > 0 and pie_bench != default
    # evaluate_edit takes the choice from the models bundle
    mask = np.zeros((300, 300), bool)
    mask[:100, :100] = True
    args = ([mask], ["cat"], ["red cat"])
    out = evaluate_edit(a, b, *args, MetricModels(dino=tiny_dino, structure_antialias=False))
    assert out["structure_distance"] == pytest.approx(pie_bench, rel=1e-6)
    out = evaluate_edit(a, b, *args, MetricModels(dino=tiny_dino))
    assert out["structure_distance"] == pytest.approx(default, rel=1e-6)


def test_bench_run_flag(monkeypatch, tiny_clip, tiny_dino, tmp_path):
    import importlib

    from aledit.bench.cli import _load_metric_models
    from aledit.cli import build_parser

    # (modules by name: ``aledit.metrics.clip_score`` is also a function of the package)
    monkeypatch.setattr(importlib.import_module("aledit.metrics.clip_score"), "load_clip", lambda i, d: tiny_clip)
    monkeypatch.setattr(importlib.import_module("aledit.metrics.structure"), "load_dino", lambda i, d: tiny_dino)
    monkeypatch.setattr("aledit.commands.check_hub_model", lambda *a, **k: None)  # no hub here: models are stubbed
    base = ["bench", "run", "ale-bench", "--out", str(tmp_path), "--no-lpips"]
    parse = lambda *a: build_parser().parse_args([*base, *a])
    models, config = _load_metric_models(parse(), "cpu")
    assert models.structure_antialias is True and "structure_resize" not in config
    models, config = _load_metric_models(parse("--pie-bench-resize"), "cpu")
    assert models.structure_antialias is False and config["structure_resize"] == "no antialias (PIE-Bench)"
