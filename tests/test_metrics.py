"""Evaluation metrics: background preservation, CLIP leakage scores, structure distance."""

import importlib.util
import logging
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.metrics import (
    METRIC_KEYS,
    MetricModels,
    MetricUnavailable,
    background_metrics,
    clip_metrics,
    clip_score,
    clip_scores,
    dino_pixel_values,
    dino_resize_hw,
    edited_clip,
    evaluate_edit,
    key_self_similarity,
    load_eval_mask,
    load_lpips,
    mask_image,
    match_size,
    mse,
    psnr,
    ssim,
    structure_distance,
    te_leakage,
    te_leakage_per_phrase,
    ti_leakage,
    to_mask,
    whole_clip,
)
from aledit.metrics import inputs as metric_inputs

HAS_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None
BACKENDS = ["builtin"] + (["torchmetrics"] if HAS_TORCHMETRICS else [])


def _random_image(seed: int, hw=(16, 20)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (*hw, 3), dtype=np.uint8)


def _box(hw, rows, cols) -> np.ndarray:
    mask = np.zeros(hw, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _cos(u, v) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _score(u, v) -> float:
    return 100.0 * max(_cos(u, v), 0.0)


class MeanColourClip:
    """Stand-in CLIP: image embedding = mean RGB over all pixels, text embedding from a table."""

    def __init__(self, texts: dict):
        self.texts = texts
        self.images_seen: list[np.ndarray] = []

    def embed_images(self, images):
        self.images_seen.extend(images)
        return torch.tensor(np.stack([im.reshape(-1, 3).mean(0) for im in images]), dtype=torch.float64)

    def embed_texts(self, texts):
        return torch.tensor([self.texts[t] for t in texts], dtype=torch.float64)


def fake_lpips(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1
    return float((a - b).abs().mean())


# --------------------------------------------------------------------------- background


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_images_give_perfect_background_scores(backend):
    src = _random_image(0)
    out = background_metrics(src, src.copy(), [_box((16, 20), (2, 8), (3, 9))], lpips=fake_lpips, backend=backend)
    assert out["bg_mse"] == 0.0
    assert out["bg_psnr"] == math.inf  # documented: no cap, as torchmetrics
    assert out["bg_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert out["bg_lpips"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_change_inside_object_leaves_background_metrics_as_identical(backend):
    src = _random_image(1)
    masks = [_box((16, 20), (2, 8), (3, 9)), _box((16, 20), (10, 15), (12, 18))]
    edited = src.copy()
    edited[2:8, 3:9] = _random_image(2, (6, 6))
    edited[10:15, 12:18] = 255 - edited[10:15, 12:18]
    changed = background_metrics(src, edited, masks, lpips=fake_lpips, backend=backend)
    same = background_metrics(src, src, masks, lpips=fake_lpips, backend=backend)
    assert changed == same
    assert changed["bg_mse"] == 0.0 and changed["bg_psnr"] == math.inf


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_answer_mse_psnr_masked_pixels_stay_in_the_mean(backend):
    # 8x8 black source; the edit whitens the 4x4 object (masked out) and one background pixel.
    src = np.zeros((8, 8, 3), np.uint8)
    edited = src.copy()
    edited[:4, :4] = 255
    edited[6, 6] = 255
    out = background_metrics(src, edited, [_box((8, 8), (0, 4), (0, 4))], backend=backend)
    # One differing pixel out of 64 (the 16 masked pixels count as equal zeros): 1/64, not 1/48.
    assert out["bg_mse"] == pytest.approx(1 / 64, rel=1e-12)
    assert out["bg_psnr"] == pytest.approx(10 * math.log10(64), rel=1e-6)

    # A soft mask weights the pixel: 1 - 0.5 = 0.5 of a unit difference -> 0.25 / 64.
    soft = np.zeros((8, 8))
    soft[:4, :4] = 1.0
    soft[6, 6] = 0.5
    out = background_metrics(src, edited, [soft], backend=backend)
    assert out["bg_mse"] == pytest.approx(0.25 / 64, rel=1e-12)


def test_mse_psnr_by_hand_on_tensors():
    a = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    b = torch.full_like(a, 0.1)
    for backend in BACKENDS:
        assert mse(a, b, backend=backend) == pytest.approx(0.01, rel=1e-9)
        assert psnr(a, b, backend=backend) == pytest.approx(20.0, rel=1e-6)
        assert psnr(a, a, backend=backend) == math.inf


def test_ssim_of_constant_images_is_the_luminance_term():
    a = torch.full((1, 3, 12, 12), 0.2, dtype=torch.float64)
    b = torch.full((1, 3, 12, 12), 0.6, dtype=torch.float64)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    for backend in BACKENDS:
        assert ssim(a, b, backend=backend) == pytest.approx(expected, rel=1e-9)


@pytest.mark.skipif(not HAS_TORCHMETRICS, reason="torchmetrics not installed")
def test_builtin_formulas_match_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 23, 31, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert mse(a, b, backend="builtin") == pytest.approx(mse(a, b, backend="torchmetrics"), rel=1e-12)
    assert psnr(a, b, backend="builtin") == pytest.approx(psnr(a, b, backend="torchmetrics"), rel=1e-6)
    assert ssim(a, b, backend="builtin") == pytest.approx(ssim(a, b, backend="torchmetrics"), abs=1e-9)


def test_auto_backend_falls_back_to_builtin_without_torchmetrics(monkeypatch):
    from aledit.metrics import background

    src, edited = _random_image(20), _random_image(21)
    masks = [_box((16, 20), (2, 8), (3, 9))]
    expected = background_metrics(src, edited, masks, backend="builtin")
    monkeypatch.setattr(background, "_torchmetrics_functional", lambda: None)
    assert background_metrics(src, edited, masks, backend="auto") == expected
    with pytest.raises(ImportError, match="aledit\\[metrics\\]"):
        background_metrics(src, edited, masks, backend="torchmetrics")


def test_background_metrics_nan_when_objects_cover_everything():
    src = _random_image(3, (8, 8))
    out = background_metrics(src, src, [np.ones((8, 8), bool)], lpips=fake_lpips)
    assert all(math.isnan(v) for v in out.values())


def test_lpips_sees_minus_one_for_masked_pixels():
    seen = {}

    def recording_lpips(a, b):
        seen["a"], seen["b"] = a, b
        return 0.25

    src, edited = _random_image(4), _random_image(5)
    mask = _box((16, 20), (0, 16), (0, 10))
    out = background_metrics(src, edited, [mask], lpips=recording_lpips)
    assert out["bg_lpips"] == 0.25
    assert seen["a"].shape == (1, 3, 16, 20)
    assert torch.all(seen["a"][..., :10] == -1) and torch.all(seen["b"][..., :10] == -1)
    assert seen["a"].min() >= -1 and seen["a"].max() <= 1


def test_lpips_unavailable_without_torchvision_is_nan_with_reason(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    record = load_lpips()
    assert isinstance(record, MetricUnavailable)
    assert record.metric == "bg_lpips" and "torchvision" in record.reason
    metric_inputs._warn_once.cache_clear()
    src = _random_image(6)
    with caplog.at_level(logging.WARNING, logger="aledit.metrics"):
        for _ in range(2):
            out = background_metrics(src, _random_image(7), [_box((16, 20), (0, 4), (0, 4))], lpips=record)
            assert math.isnan(out["bg_lpips"])
            assert math.isfinite(out["bg_psnr"]) and math.isfinite(out["bg_ssim"])
    warnings = [r for r in caplog.records if "bg_lpips" in r.getMessage()]
    assert len(warnings) == 1 and "torchvision" in warnings[0].getMessage()
    models = MetricModels(lpips=record)
    assert "torchvision" in models.unavailable()["bg_lpips"]


# --------------------------------------------------------------------------- inputs


def test_edited_image_is_resized_bicubic_to_source_size():
    src = _random_image(8, (12, 16))
    edited = _random_image(9, (24, 40))
    a, b = match_size(Image.fromarray(src), Image.fromarray(edited))
    assert a.shape == b.shape == (12, 16, 3)
    expected = np.asarray(Image.fromarray(edited).resize((16, 12), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(b, expected)


def test_mask_readings(tmp_path):
    hw = (4, 6)
    as_bool = _box(hw, (1, 3), (2, 5))
    np.testing.assert_array_equal(to_mask(as_bool, hw), as_bool.astype(float))
    np.testing.assert_array_equal(to_mask(as_bool.astype(np.uint8) * 255, hw), as_bool.astype(float))
    np.testing.assert_array_equal(to_mask(torch.from_numpy(as_bool), hw), as_bool.astype(float))
    np.testing.assert_allclose(to_mask(Image.fromarray(np.full(hw, 51, np.uint8)), hw), 0.2)
    # Nearest resize of a 2x upsampled mask gives it back.
    np.testing.assert_array_equal(to_mask(np.kron(as_bool, np.ones((2, 2), bool)), hw), as_bool.astype(float))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_mask(np.full(hw, 2.0), hw)
    # An opaque RGBA mask file is read by luminance (the authors' convert("L")), not alpha.
    rgba = np.zeros((*hw, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[as_bool, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_eval_mask(tmp_path / "m.png"), as_bool.astype(float))


def test_mask_image_truncates_like_numpy_uint8_and_keeps_size():
    image = np.full((2, 3, 3), 255, np.uint8)
    mask = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.999]])
    out = mask_image(image, mask)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[255, 127, 0], [0, 255, 254]])


# --------------------------------------------------------------------------- CLIP formulas

RED, GREEN, BG = (200, 40, 0), (0, 180, 60), (30, 30, 120)
TEXTS = {
    "red car": (1.0, 0.0, 0.0),
    "green bus": (0.0, 1.0, 0.0),
    "blue sky": (-1.0, 0.0, 0.3),
    "red car and green bus": (1.0, 1.0, 0.2),
    "red car and green bus and blue sky": (0.3, 0.4, 1.0),
    "car and bus": (0.5, 0.5, 0.5),
}


def _scene():
    """8x8: object A (red) top-left 4x4, object B (green) bottom-right 4x4, background blue-ish."""
    image = np.empty((8, 8, 3), np.uint8)
    image[:] = BG
    image[:4, :4] = RED
    image[4:, 4:] = GREEN
    return image, [_box((8, 8), (0, 4), (0, 4)), _box((8, 8), (4, 8), (4, 8))]


def test_clip_score_is_100_times_clamped_cosine():
    enc = MeanColourClip(TEXTS)
    red = np.full((4, 4, 3), RED, np.uint8)
    assert clip_score(enc, red, "red car") == pytest.approx(_score(RED, TEXTS["red car"]), rel=1e-9)
    assert clip_score(enc, red, "blue sky") == 0.0  # negative cosine clamps to 0
    table = clip_scores(enc, [red, np.full((4, 4, 3), GREEN, np.uint8)], ["red car", "green bus", "blue sky"])
    assert table.shape == (2, 3)
    assert float(table[1, 1]) == pytest.approx(_score(GREEN, TEXTS["green bus"]), rel=1e-9)


def test_te_ti_edited_whole_match_hand_computation():
    image, masks = _scene()
    phrases = ["red car", "green bus"]
    enc = MeanColourClip(TEXTS)
    # A masked image's mean colour points along its region's colour (zeros only scale it).
    expected = {
        "te_leakage": _score(BG, TEXTS["red car and green bus"]),
        "te_leakage_per_phrase": (_score(BG, TEXTS["red car"]) + _score(BG, TEXTS["green bus"])) / 2,
        "ti_leakage": (_score(RED, TEXTS["green bus"]) + _score(GREEN, TEXTS["red car"])) / 2,
        "edited_clip": (_score(RED, TEXTS["red car"]) + _score(GREEN, TEXTS["green bus"])) / 2,
        "whole_clip": _score(
            (16 * np.array(RED) + 16 * np.array(GREEN) + 32 * np.array(BG)) / 64, TEXTS["red car and green bus"]
        ),
    }
    assert clip_metrics(enc, image, masks, phrases) == pytest.approx(expected, rel=1e-9)
    assert te_leakage(enc, image, masks, phrases) == pytest.approx(expected["te_leakage"], rel=1e-9)
    assert te_leakage_per_phrase(enc, image, masks, phrases) == pytest.approx(
        expected["te_leakage_per_phrase"], rel=1e-9
    )
    assert ti_leakage(enc, image, masks, phrases) == pytest.approx(expected["ti_leakage"], rel=1e-9)
    assert edited_clip(enc, image, masks, phrases) == pytest.approx(expected["edited_clip"], rel=1e-9)
    assert whole_clip(enc, image, phrases) == pytest.approx(expected["whole_clip"], rel=1e-9)
    # The encoder saw full-size images with everything outside the region set to 0.
    background_view = mask_image(image, 1 - np.maximum(masks[0], masks[1]))
    assert any(np.array_equal(seen, background_view) for seen in enc.images_seen)
    assert all(seen.shape == (8, 8, 3) for seen in enc.images_seen)


def test_ti_over_all_ordered_pairs_of_three_objects():
    image, masks = _scene()
    image[4:, :4] = (10, 10, 200)
    masks.append(_box((8, 8), (4, 8), (0, 4)))
    phrases = ["red car", "green bus", "blue sky"]
    colours = [RED, GREEN, (10, 10, 200)]
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = sum(_score(colours[j], TEXTS[phrases[i]]) for i, j in pairs) / 6
    assert ti_leakage(MeanColourClip(TEXTS), image, masks, phrases) == pytest.approx(expected, rel=1e-9)


def test_ti_is_nan_for_one_object_and_te_nan_without_background():
    image, masks = _scene()
    enc = MeanColourClip(TEXTS)
    assert math.isnan(ti_leakage(enc, image, masks[:1], ["red car"]))
    one = clip_metrics(enc, image, masks[:1], ["red car"])
    assert math.isnan(one["ti_leakage"])
    assert one["te_leakage"] == pytest.approx(one["te_leakage_per_phrase"], rel=1e-12)  # N = 1: same
    full = [np.ones((8, 8), bool)]
    assert math.isnan(te_leakage(enc, image, full, ["red car"]))
    with pytest.raises(ValueError, match="one mask per target phrase"):
        ti_leakage(enc, image, masks, ["red car"])


def test_evaluate_edit_with_stand_in_models():
    image, masks = _scene()
    source = image.copy()
    source[:4, :4] = (90, 90, 90)
    enc = MeanColourClip(TEXTS)
    out = evaluate_edit(
        source, image, masks, ["car", "bus"], ["red car", "green bus"], MetricModels(clip=enc, lpips=fake_lpips)
    )
    assert tuple(out) == METRIC_KEYS
    for key, value in clip_metrics(enc, image, masks, ["red car", "green bus"]).items():
        assert out[key] == pytest.approx(value, rel=1e-12)
    assert out["source_clip"] == pytest.approx(clip_score(enc, source, "car and bus"), rel=1e-12)
    assert math.isnan(out["structure_distance"])  # no DINO given
    assert out["bg_mse"] == 0.0 and out["bg_psnr"] == math.inf and out["bg_lpips"] == 0.0

    bare = evaluate_edit(source, image, masks, ["car", "bus"], ["red car", "green bus"], MetricModels())
    assert all(math.isnan(bare[k]) for k in ("te_leakage", "ti_leakage", "edited_clip", "bg_lpips"))
    assert bare["bg_mse"] == 0.0


# --------------------------------------------------------------------------- tiny real models


def test_tiny_clip_embeddings_and_scores(tiny_clip):
    images = [_random_image(10, (24, 32)), _random_image(11, (40, 30))]
    feats = tiny_clip.embed_images(images)
    assert feats.shape == (2, 16)
    assert tiny_clip.embed_texts(["a red car", "a bus made of gold and a blue sky"]).shape == (2, 16)
    table = clip_scores(tiny_clip, images, ["a red car", "a bus"])
    assert table.shape == (2, 2) and torch.all((table >= 0) & (table <= 100))
    torch.testing.assert_close(clip_scores(tiny_clip, images, ["a red car", "a bus"]), table)  # deterministic
    single = clip_score(tiny_clip, images[1], "a bus")
    assert single == pytest.approx(float(table[1, 1]), abs=1e-3)  # batching does not change a score


def test_tiny_dino_keys_are_last_layer_keys(tiny_dino):
    from aledit.metrics.structure import _key_projection, _vit_layers

    pixels = dino_pixel_values(_random_image(12, (24, 32)))
    assert pixels.shape == (1, 3, 224, 298)
    keys = tiny_dino.keys(pixels)
    assert keys.shape == (1, 1 + 28 * 37, 32)
    with torch.no_grad():
        hidden = tiny_dino.model(
            pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True
        ).hidden_states
        last = _vit_layers(tiny_dino.model)[-1]
        expected = _key_projection(last)(last.layernorm_before(hidden[-2]))
    torch.testing.assert_close(keys, expected)
    sim = key_self_similarity(keys)
    assert sim.shape == (1, keys.shape[1], keys.shape[1])
    torch.testing.assert_close(torch.diagonal(sim[0]), torch.ones(keys.shape[1]))


def test_dino_preprocessing():
    assert dino_resize_hw(1000, 1000) == (224, 224)
    assert dino_resize_hw(512, 768) == (224, 336)
    assert dino_resize_hw(200, 1000) == (96, 480)  # longer side capped at 480
    image = _random_image(13, (30, 30))
    quirk, plain = dino_pixel_values(image, True), dino_pixel_values(image, False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # Quirk: ImageNet normalisation applied to 0-255 values instead of 0-1.
    torch.testing.assert_close(quirk * std + mean, 255 * (plain * std + mean), rtol=1e-5, atol=1e-3)


def test_structure_distance_on_tiny_dino(tiny_dino):
    a, b = _random_image(14, (24, 32)), _random_image(15, (24, 32))
    assert structure_distance(tiny_dino, a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    d_ab = structure_distance(tiny_dino, a, b, pie_bench_quirk=False)
    assert d_ab > 0
    assert structure_distance(tiny_dino, b, a, pie_bench_quirk=False) == pytest.approx(d_ab, rel=1e-5)
    assert structure_distance(tiny_dino, a, b, pie_bench_quirk=False) == d_ab  # deterministic
    assert structure_distance(tiny_dino, a, b, pie_bench_quirk=True) > 0


def test_models_from_local_folders_end_to_end(tmp_path, tiny_clip, tiny_dino):
    tiny_clip.model.save_pretrained(tmp_path / "clip")
    tiny_clip.image_processor.save_pretrained(tmp_path / "clip")
    tiny_clip.tokenizer.save_pretrained(tmp_path / "clip")
    tiny_dino.model.save_pretrained(tmp_path / "dino")
    models = MetricModels.from_pretrained(clip_id=tmp_path / "clip", dino_id=tmp_path / "dino", lpips=False)
    assert isinstance(models.lpips, MetricUnavailable)

    source = _random_image(16, (24, 32))
    edited = source.copy()
    edited[2:10, 3:12] = _random_image(17, (8, 9))
    masks = [_box((24, 32), (2, 10), (3, 12)), _box((24, 32), (12, 20), (16, 28))]
    args = (["cat", "dog"], ["red cat", "dog made of gold"], models)
    out = evaluate_edit(source, Image.fromarray(edited), masks, *args)
    assert tuple(out) == METRIC_KEYS
    for key in ("te_leakage", "te_leakage_per_phrase", "ti_leakage", "edited_clip", "whole_clip", "source_clip"):
        assert 0.0 <= out[key] <= 100.0
    assert out["structure_distance"] > 0
    assert out["bg_mse"] == 0.0 and out["bg_psnr"] == math.inf
    assert math.isnan(out["bg_lpips"])
    again = evaluate_edit(source, Image.fromarray(edited), masks, *args)
    assert again == pytest.approx(out, nan_ok=True)
    # The loaded encoder scores like the in-memory one.
    assert clip_score(models.clip, edited, "red cat") == pytest.approx(
        clip_score(tiny_clip, edited, "red cat"), abs=1e-4
    )

    one = evaluate_edit(source, source, masks[:1], ["cat"], ["red cat"], models)
    assert math.isnan(one["ti_leakage"]) and one["structure_distance"] == pytest.approx(0.0, abs=1e-12)
