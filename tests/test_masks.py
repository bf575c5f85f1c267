import numpy as np
import pytest
import torch
from PIL import Image

from aledit.masks import (
    GivenMasks,
    MaskError,
    ObjectMasks,
    dilate,
    dilation_radius,
    downsample_any,
    exclusive_regions,
    load_mask,
)


def test_dilation_radius_matches_the_paper():
    assert dilation_radius(0.01, (768, 768)) == 7
    assert dilation_radius(0.04, (768, 512)) == 30
    assert dilation_radius(0.0, (768, 768)) == 0


def test_dilate_is_a_disk():
    m = torch.zeros(11, 11, dtype=torch.bool)
    m[5, 5] = True
    d = dilate(m, 2)
    yy, xx = np.mgrid[:11, :11]
    expected = (yy - 5) ** 2 + (xx - 5) ** 2 <= 4
    assert torch.equal(d, torch.from_numpy(expected))
    assert torch.equal(dilate(m, 0), m)


def test_exclusive_regions_send_overlaps_to_the_base():
    masks = torch.zeros(2, 1, 4, dtype=torch.bool)
    masks[0, 0, :3] = True
    masks[1, 0, 2:] = True
    objects, base = exclusive_regions(masks)
    assert objects[0, 0].tolist() == [True, True, False, False]
    assert objects[1, 0].tolist() == [False, False, False, True]
    assert base[0].tolist() == [False, False, True, False]
    # every pixel is in exactly one region
    assert torch.equal(objects.sum(0) + base.long(), torch.ones(1, 4, dtype=torch.long))


def test_downsample_any_keeps_small_objects():
    m = torch.zeros(64, 64, dtype=torch.bool)
    m[10, 10] = True
    small = downsample_any(m, (8, 8))
    assert small.sum() == 1 and bool(small[1, 1])


def test_load_mask_from_files_and_arrays(tmp_path):
    arr = np.zeros((20, 10), np.uint8)
    arr[5:10, 2:4] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m.shape == (20, 10) and m.sum() == 10
    assert load_mask(arr, size=(5, 10)).shape == (10, 5)
    with pytest.raises(MaskError, match="not found"):
        load_mask(tmp_path / "nope.png", name="wolf")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(MaskError, match="not a readable image"):
        load_mask(tmp_path / "bad.png")


def test_object_masks_errors_and_background():
    full = np.zeros((100, 100), bool)
    full[40:60, 40:60] = True
    om = ObjectMasks.from_sources({"wolf": full}, ["wolf"], size=(50, 50), dilation_ratio=0.0)
    assert om.masks.shape == (1, 50, 50) and om.masks.sum() == 100
    assert torch.equal(om.background(), ~om.masks[0])
    with pytest.raises(MaskError, match="no mask for edited object"):
        ObjectMasks.from_sources({"wolf": full}, ["wolf", "moon"], size=(50, 50))
    tiny = np.zeros((1000, 1000), bool)
    tiny[3, 3] = True
    with pytest.raises(MaskError, match="empty after resizing"):
        ObjectMasks.from_sources({"dot": tiny}, ["dot"], size=(64, 64))
    with pytest.raises(MaskError):
        GivenMasks({"wolf": full})(Image.new("RGB", (100, 100)), ["moon"])


def test_real_bench_masks(bench_dir):
    import os

    path = os.path.join(bench_dir, "masks", "natural_img01", "blue globe_mask.png")
    om = ObjectMasks.from_sources({"blue globe": path}, ["blue globe"], size=(768, 768))
    raw = load_mask(path, size=(768, 768))
    # dilation by 7 px only grows the mask
    assert bool((om.masks[0] | raw).eq(om.masks[0]).all()) and om.masks[0].sum() > raw.sum()


def test_opaque_rgba_masks_are_read_by_grey_level(bench_dir):
    import os

    path = os.path.join(bench_dir, "masks", "artificial_img01", "floor_mask.png")
    assert Image.open(path).mode == "RGBA"
    m = load_mask(path)
    grey = np.asarray(Image.open(path).convert("L")) >= 128
    assert torch.equal(m, torch.from_numpy(grey)) and 0 < m.float().mean() < 0.9


def test_transparent_masks_are_read_by_alpha_and_values_by_half_range():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255
    m = load_mask(Image.fromarray(rgba, "RGBA"))
    assert m[:2].all() and not m[2:].any()
    assert load_mask(np.array([[0.2, 0.7]])).tolist() == [[False, True]]
    assert load_mask(np.array([[0, 1]])).tolist() == [[False, True]]
    assert load_mask(np.array([[3, 200]], np.uint8)).tolist() == [[False, True]]
