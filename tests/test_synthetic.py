"""The synthetic world (scenes, edits, ideal edits) and its exact edit metrics."""

from __future__ import annotations

import itertools
import math
import re
import time

import numpy as np
import pytest

from aledit.edits import EditType, infer_edit_type
from aledit.synthetic.metrics import (
    COLOR_NAMES,
    classify_material,
    classify_pixels,
    iou,
    material_references,
    score_edit,
    texture_descriptor,
)
from aledit.synthetic.scenes import (
    BACKGROUNDS,
    COLORS,
    EDITED_ATTRIBUTES,
    MATERIALS,
    SHAPES,
    SceneObject,
    SceneSpec,
    SyntheticError,
    apply_edit,
    make_edit,
    random_edit,
    random_scene,
    render,
    render_edit,
    shape_mask,
    texture_pattern,
)

ALL_TYPES = list(EditType)
PHRASE = re.compile(r"^(\w+)-colored (\w+) made of (\w+)$")


# ------------------------------------------------------------------------------------------
# helpers


def two_object_spec(background: str = "khaki", noise: int = 0) -> SceneSpec:
    """A red flat square (17x17 px at x, y in 8..24) and a blue striped circle, far apart."""
    return SceneSpec(
        64,
        64,
        (
            SceneObject("square", "red", "paint", (16, 16), 10),
            SceneObject("circle", "blue", "stripes", (44, 44), 12),
        ),
        background,
        noise,
        7,
    )


# Explicit targets for the two-object scene, per edit type (object 0, object 1).
TARGETS = {
    EditType.COLOR: ({"color": "yellow"}, {"color": "green"}),
    EditType.OBJECT: ({"shape": "heart"}, {"shape": "star"}),
    EditType.MATERIAL: ({"material": "checkers"}, {"material": "dots"}),
    EditType.COLOR_OBJECT: ({"color": "yellow", "shape": "heart"}, {"color": "green", "shape": "star"}),
    EditType.OBJECT_MATERIAL: ({"shape": "heart", "material": "checkers"}, {"shape": "star", "material": "dots"}),
}


def known(edit_type: EditType, noise: int = 0):
    scene = render(two_object_spec(noise=noise))
    edit = make_edit(scene, edit_type, {0: TARGETS[edit_type][0], 1: TARGETS[edit_type][1]})
    return scene, edit, render_edit(scene, edit)


def paint(image: np.ndarray, mask: np.ndarray, color: str, material: str = "paint") -> np.ndarray:
    """A copy of ``image`` with ``mask`` drawn in ``color`` / ``material`` (image-anchored texture)."""
    out = image.copy()
    dark = texture_pattern(material, *mask.shape)
    out[mask & ~dark] = COLORS[color][0]
    out[mask & dark] = COLORS[color][1]
    return out


# ------------------------------------------------------------------------------------------
# the world


def test_vocabularies_and_palette_are_well_separated():
    assert len(SHAPES) >= 6 and len(COLORS) >= 8 and len(MATERIALS) >= 4
    tones = {f"{c}/{k}": np.array(COLORS[c][k], float) for c in COLORS for k in (0, 1)}
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(tones.values(), 2)]
    assert min(gaps) > 71
    for bg, rgb in BACKGROUNDS.items():
        assert bg not in COLORS
        assert min(np.linalg.norm(np.array(rgb, float) - t) for t in tones.values()) >= 90
    # shade = a darker tone of the same colour (black's is a lighter grey)
    for c, (base, shade) in COLORS.items():
        if c != "black":
            assert sum(shade) < sum(base)


def test_random_scene_is_deterministic_by_seed():
    a, b, c = random_scene(123), random_scene(123), random_scene(124)
    assert a.spec == b.spec and a.caption == b.caption
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.spec != c.spec
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [random_scene(g1).spec for _ in range(3)] == [random_scene(g2).spec for _ in range(3)]
    # render is pure: the spec alone reproduces the pixels
    again = render(a.spec)
    assert np.array_equal(again.image, a.image) and np.array_equal(again.silhouettes, a.silhouettes)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3) and not a.image.flags.writeable


@pytest.mark.parametrize("noise", [0, 6])
def test_masks_cover_exactly_the_drawn_pixels(noise):
    for seed in range(40):
        scene = random_scene(seed, background_noise=noise)
        h, w = scene.image.shape[:2]
        img = scene.image.astype(int)
        assert scene.masks.shape == (len(scene.objects), h, w) and scene.masks.dtype == bool
        assert scene.masks.sum(axis=0).max() <= 1  # disjoint
        assert not (scene.masks & ~scene.silhouettes).any()
        for obj, mask in zip(scene.objects, scene.masks):
            dark = texture_pattern(obj.material, h, w)
            assert (img[mask & ~dark] == COLORS[obj.color][0]).all()
            assert (img[mask & dark] == COLORS[obj.color][1]).all()
            full = shape_mask(obj.shape, obj.center, obj.size, h, w)
            assert np.array_equal(full, scene.silhouettes[list(scene.objects).index(obj)])
        bg = scene.background_mask
        deviation = np.abs(img - np.array(scene.background_rgb)).max(axis=-1)
        assert deviation[bg].max() <= noise
        assert (deviation[~bg] > 20).all()  # every object pixel differs from the background
        # removing an object changes nothing outside its visible mask
        for i in range(len(scene.objects)):
            spec = SceneSpec(
                h, w, scene.objects[:i] + scene.objects[i + 1 :], scene.background, noise, scene.spec.noise_seed
            )
            changed = (render(spec).image != scene.image).any(axis=-1)
            assert not (changed & ~scene.masks[i]).any()


def test_occlusion_is_recorded_exactly():
    # two 17x17 squares (x 12..28 and 20..36): the top one hides 9 of the bottom one's 17 columns
    spec = SceneSpec(
        64,
        64,
        (SceneObject("square", "red", "paint", (20, 20), 10), SceneObject("square", "blue", "paint", (28, 20), 10)),
        "mint",
    )
    scene = render(spec)
    assert scene.silhouettes.sum(axis=(1, 2)).tolist() == [289, 289]
    assert scene.masks.sum(axis=(1, 2)).tolist() == [8 * 17, 289]
    assert scene.visible_fractions == (8 / 17, 1.0)
    assert (scene.image[12:29, 20:37] == COLORS["blue"][0]).all()
    assert (scene.image[12:29, 12:20] == COLORS["red"][0]).all()


def test_random_scenes_respect_min_visible_and_do_overlap():
    fractions, counts = [], set()
    for seed in range(200):
        scene = random_scene(seed, min_visible=0.6)
        counts.add(len(scene.objects))
        shapes = [o.shape for o in scene.objects]
        assert len(set(shapes)) == len(shapes)
        for obj in scene.objects:  # fully inside the frame
            assert obj.size <= obj.center[0] <= 63 - obj.size and obj.size <= obj.center[1] <= 63 - obj.size
        fractions += scene.visible_fractions
        np.testing.assert_allclose(
            scene.visible_fractions, scene.masks.sum(axis=(1, 2)) / scene.silhouettes.sum(axis=(1, 2))
        )
    assert counts == {1, 2, 3}
    assert min(fractions) >= 0.6
    assert sum(f < 1 for f in fractions) >= 20  # occlusion does happen


def test_captions_use_one_phrase_scheme():
    scene = random_scene(3, n_objects=3)
    expected = " and ".join(f"{o.color}-colored {o.shape} made of {o.material}" for o in scene.objects)
    assert scene.caption == expected
    for part in scene.caption.split(" and "):
        assert PHRASE.match(part)
    caption = render(two_object_spec()).caption
    assert caption == "red-colored square made of paint and blue-colored circle made of stripes"


def test_size_is_configurable():
    scene = random_scene(0, n_objects=2, size=(48, 80))
    assert scene.image.shape == (48, 80, 3) and scene.masks.shape == (2, 48, 80)
    big = random_scene(0, n_objects=3, size=128)
    assert big.image.shape == (128, 128, 3)
    # texture cell scales with the image: 4 px at 128
    assert texture_pattern("stripes", 128, 128)[:8, 0].tolist() == [False] * 4 + [True] * 4


def test_invalid_specs_raise_actionable_errors():
    with pytest.raises(SyntheticError, match="unknown shape 'blob'.*circle"):
        SceneObject("blob", "red", "paint", (5, 5), 3)
    with pytest.raises(SyntheticError, match="unknown color 'teal'"):
        SceneObject("circle", "teal", "paint", (5, 5), 3)
    with pytest.raises(SyntheticError, match="unknown background"):
        SceneSpec(64, 64, (), "red")
    with pytest.raises(SyntheticError, match="n_objects"):
        random_scene(0, n_objects=0)


def test_generation_is_fast():
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(500):
        random_scene(rng)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.5, f"500 scenes took {elapsed:.2f}s"  # about 2000-3000/s on one CPU core


# ------------------------------------------------------------------------------------------
# edits


def test_edit_pairs_follow_the_templates_and_never_keep_the_source_attribute():
    templates = {
        EditType.COLOR: "{color}-colored {shape}",
        EditType.OBJECT: "{shape}",
        EditType.MATERIAL: "{shape} made of {material}",
        EditType.COLOR_OBJECT: "{color}-colored {shape}",
        EditType.OBJECT_MATERIAL: "{shape} made of {material}",
    }
    for seed, edit_type in itertools.product(range(60), ALL_TYPES):
        scene = random_scene(seed)
        edit = random_edit(scene, edit_type, seed)
        assert edit.indices == tuple(range(len(scene.objects)))
        changed = EDITED_ATTRIBUTES[edit_type]
        for e in edit.objects:
            t = e.target
            assert e.source == scene.objects[e.index]
            assert e.source_phrase == e.source.shape
            assert e.target_phrase == templates[edit_type].format(color=t.color, shape=t.shape, material=t.material)
            assert infer_edit_type(e.source_phrase, e.target_phrase) == edit_type
            assert (t.center, t.size) == (e.source.center, e.source.size)
            for attr in ("color", "shape", "material"):
                if attr in changed:
                    assert getattr(t, attr) != getattr(e.source, attr)
                else:
                    assert getattr(t, attr) == getattr(e.source, attr)
        for attr in changed:
            values = [getattr(e.target, attr) for e in edit.objects]
            assert len(set(values)) == len(values)  # edited objects get different targets
            if attr != "material":  # colours and shapes avoid everything already in the scene
                assert not set(values) & {getattr(o, attr) for o in scene.objects}
        assert random_edit(scene, edit_type, seed) == edit  # deterministic
        assert edit.target_prompt == " and ".join(t for _, t in edit.pairs)
        assert [x.resolved_type for x in edit.edits] == [edit_type] * len(edit.objects)


def test_random_edit_on_a_subset():
    scene = random_scene(11, n_objects=3)
    one = random_edit(scene, "color", 0, n_edit=1)
    assert len(one.objects) == 1
    chosen = random_edit(scene, "material", 0, indices=(0, 2))
    assert chosen.indices == (0, 2)
    with pytest.raises(SyntheticError, match="n_edit"):
        random_edit(scene, "color", 0, n_edit=4)


def test_make_edit_rejects_edits_that_change_nothing_or_the_wrong_attribute():
    scene = render(two_object_spec())
    with pytest.raises(SyntheticError, match="equals the source"):
        make_edit(scene, EditType.COLOR, {0: {"color": "red"}})
    with pytest.raises(SyntheticError, match="changes \\['color'\\]"):
        make_edit(scene, EditType.COLOR, {0: {"shape": "heart"}})
    with pytest.raises(SyntheticError, match="share a shape"):
        make_edit(scene, EditType.OBJECT, {0: {"shape": "circle"}})


@pytest.mark.parametrize("edit_type", ALL_TYPES)
def test_ideal_edit_changes_only_the_edited_objects(edit_type):
    for seed in range(30):
        scene = random_scene(seed, background_noise=4)
        edit = random_edit(scene, edit_type, seed, n_edit=1 if seed % 2 else None)
        ideal = render_edit(scene, edit)
        assert ideal.spec == apply_edit(scene.spec, edit)
        touched = np.zeros(scene.masks.shape[1:], dtype=bool)
        for e in edit.objects:
            touched |= scene.masks[e.index] | ideal.masks[e.index]
            region = scene.masks[e.index] | ideal.masks[e.index]
            assert (ideal.image[region] != scene.image[region]).any()
            tones = {COLORS[e.target.color][0], COLORS[e.target.color][1]}
            assert {tuple(p) for p in ideal.image[ideal.masks[e.index]]} <= tones
        assert np.array_equal(ideal.image[~touched], scene.image[~touched])
        if "shape" not in EDITED_ATTRIBUTES[edit_type]:
            assert np.array_equal(ideal.masks, scene.masks)
        assert min(ideal.visible_fractions) >= 0.5


# ------------------------------------------------------------------------------------------
# metrics: building blocks


def test_classify_pixels_nearest_tone_with_tolerance():
    bg = BACKGROUNDS["mint"]
    row = [COLORS["red"][0], COLORS["red"][1], COLORS["cyan"][1], bg, (128, 128, 128), (230, 50, 45)]
    cls = classify_pixels(np.array([row], dtype=np.uint8), "mint")
    red, cyan = COLOR_NAMES.index("red"), COLOR_NAMES.index("cyan")
    assert cls.color[0].tolist() == [red, red, cyan, -1, -1, red]
    assert cls.shade[0].tolist() == [False, True, True, False, False, False]
    assert cls.background[0].tolist() == [False, False, False, True, False, False]
    assert cls.unknown[0].tolist() == [False, False, False, False, True, False]  # grey is 60+ from all tones


def test_texture_references_and_material_classification():
    refs = material_references(64, 64)
    # (shade fraction, horizontal and vertical transition rates); 31 of 63 pairs per line change
    assert refs == {
        "paint": (0.0, 0.0, 0.0),
        "stripes": (0.5, 0.0, 31 / 63),
        "dots": (0.25, 31 / 126, 31 / 126),
        "checkers": (0.5, 31 / 63, 31 / 63),
    }
    for seed in range(150):  # every visible object of random scenes reads as its own material
        scene = random_scene(seed, background_noise=6)
        cls = classify_pixels(scene.image, scene.background)
        for obj, mask in zip(scene.objects, scene.masks):
            assert classify_material(cls, mask) == obj.material
    scene = render(two_object_spec())
    cls = classify_pixels(scene.image, scene.background)
    assert classify_material(cls, scene.background_mask) is None
    np.testing.assert_allclose(texture_descriptor(cls, scene.masks[0]), [0, 0, 0])


def test_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert iou(a, b) == 4 / 12 and iou(a, a) == 1.0 and iou(a & False, b & False) == 1.0


# ------------------------------------------------------------------------------------------
# metrics: known answers on hand-made images


@pytest.mark.parametrize("edit_type", ALL_TYPES)
def test_perfect_edit_scores_success_one_and_no_leakage(edit_type):
    scene, edit, ideal = known(edit_type)
    s = score_edit(scene, edit, ideal.image)
    assert s.success == 1.0 and s.ti_leakage == 0.0 and s.te_changed == 0.0 and s.te_target_color == 0.0
    for value in (s.structure_kept, s.color_kept, s.material_kept):
        assert math.isnan(value) or value == 1.0
    changed = EDITED_ATTRIBUTES[edit_type]
    for o in s.objects:
        assert o.success == 1.0
        assert math.isnan(o.color_success) == ("color" not in changed)
        assert math.isnan(o.shape_success) == ("shape" not in changed)
        assert math.isnan(o.material_success) == ("material" not in changed)
        assert math.isnan(o.structure_kept) == ("shape" in changed)
    assert all(0.0 <= v <= 1.0 for v in s.as_dict().values() if not math.isnan(v))


@pytest.mark.parametrize("edit_type", ALL_TYPES)
def test_copy_of_the_source_scores_success_zero(edit_type):
    scene, edit, ideal = known(edit_type)
    s = score_edit(scene, edit, scene.image, ideal=ideal)
    assert s.success == 0.0 and [o.success for o in s.objects] == [0.0, 0.0]
    # an unchanged image leaks nothing and keeps everything it should keep
    assert s.ti_leakage == 0.0 and s.te_changed == 0.0 and s.te_target_color == 0.0
    if "shape" not in EDITED_ATTRIBUTES[edit_type]:
        assert s.structure_kept == 1.0


def test_color_leak_into_the_other_object_gives_ti_one_half():
    # Object 1 is painted with object 0's target colour (yellow) instead of its own (green).
    # Ordered pairs: (0 -> 1): object 1's whole region took yellow = 1; (1 -> 0): object 0 shows
    # no green = 0. The mean over the two ordered pairs is 0.5.
    scene, edit, ideal = known(EditType.COLOR)
    leaked = paint(ideal.image, scene.masks[1], "yellow", "stripes")
    s = score_edit(scene, edit, leaked, ideal=ideal)
    assert s.ti_leakage == 0.5 and s.ti_color == 0.5
    assert [o.success for o in s.objects] == [1.0, 0.0] and s.success == 0.5
    assert s.te_changed == 0.0 and s.structure_kept == 1.0 and s.material_kept == 1.0


def test_half_recoloured_object_scores_its_fraction():
    scene, edit, ideal = known(EditType.COLOR)
    image = ideal.image.copy()
    image[16:25, 8:25] = scene.image[16:25, 8:25]  # bottom 9 of the square's 17 rows stay red
    s = score_edit(scene, edit, image, ideal=ideal)
    assert s.objects[0].color_success == 8 / 17 and s.objects[1].color_success == 1.0
    assert s.ti_leakage == 0.0 and s.te_changed == 0.0


def test_background_repainted_gives_te_one():
    scene, edit, ideal = known(EditType.COLOR)
    bg = scene.background_mask
    other = ideal.image.copy()
    other[bg] = BACKGROUNDS["lavender"]
    s = score_edit(scene, edit, other, ideal=ideal)
    assert s.te_changed == 1.0 and s.te_target_color == 0.0 and s.success == 1.0 and s.ti_leakage == 0.0
    targeted = paint(ideal.image, bg, "yellow")  # object 0's target colour everywhere around
    s = score_edit(scene, edit, targeted, ideal=ideal)
    assert s.te_changed == 1.0 and s.te_target_color == 1.0
    half = ideal.image.copy()
    half[:, :32][bg[:, :32]] = BACKGROUNDS["lavender"]
    s = score_edit(scene, edit, half, ideal=ideal)
    assert s.te_changed == bg[:, :32].sum() / bg.sum()


def test_material_leak_gives_ti_one_half():
    # object 1 gets object 0's target material (checkers) instead of dots: pair (0 -> 1) = 1
    scene, edit, ideal = known(EditType.MATERIAL)
    leaked = paint(ideal.image, scene.masks[1], "blue", "checkers")
    s = score_edit(scene, edit, leaked, ideal=ideal)
    assert s.ti_leakage == 0.5 and s.ti_material == 0.5
    assert [o.success for o in s.objects] == [1.0, 0.0] and s.color_kept == 1.0


def test_material_pair_is_skipped_when_the_source_already_has_that_material():
    # object 0 -> stripes, but object 1 is already striped: a failed edit of object 1 would look
    # like leakage, so pair (0 -> 1) is skipped; only (1 -> 0) counts.
    scene = render(two_object_spec())
    edit = make_edit(scene, EditType.MATERIAL, {0: {"material": "stripes"}, 1: {"material": "dots"}})
    ideal = render_edit(scene, edit)
    s = score_edit(scene, edit, scene.image, ideal=ideal)
    assert s.ti_material == 0.0 and [o.success for o in s.objects] == [0.0, 0.0]
    s = score_edit(scene, edit, paint(ideal.image, scene.masks[0], "red", "dots"), ideal=ideal)
    assert s.ti_material == 1.0  # the only counted pair, (1 -> 0), leaked


def test_shape_leak_gives_ti_one_half():
    # square -> heart, circle -> star; the circle is drawn as a heart (object 0's target shape)
    # in its own colour: pair (0 -> 1) = 1, pair (1 -> 0) = 0.
    scene, edit, ideal = known(EditType.OBJECT)
    wrong = list(ideal.spec.objects)
    wrong[1] = SceneObject("heart", "blue", "stripes", wrong[1].center, wrong[1].size)
    leaked = render(SceneSpec(64, 64, tuple(wrong), "khaki", 0, 7)).image
    s = score_edit(scene, edit, leaked, ideal=ideal)
    assert s.ti_leakage == 0.5 and s.ti_shape == 0.5
    assert s.objects[0].success == 1.0 and s.objects[1].shape_iou < 1.0
    # the heart's lobes stick out of the circle's and the star's regions: that is also TE
    spill = shape_mask("heart", wrong[1].center, wrong[1].size, 64, 64)
    outside = spill & ~(scene.masks[1] | ideal.masks[1])
    background = ~(scene.masks | ideal.masks).any(axis=0)
    assert outside.any() and s.te_changed == s.te_target_color == outside.sum() / background.sum()


def test_color_object_edit_components():
    scene, edit, ideal = known(EditType.COLOR_OBJECT)
    # right colour on the old shape: colour success counts the overlap only, shape success 0
    image = scene.image.copy()
    image = paint(image, scene.masks[0], "yellow")
    image = paint(image, scene.masks[1], "green", "stripes")
    s = score_edit(scene, edit, image, ideal=ideal)
    for o, i in zip(s.objects, (0, 1)):
        overlap = (scene.masks[i] & ideal.masks[i]).sum() / ideal.masks[i].sum()
        assert o.color_success == pytest.approx(overlap) and o.shape_success == 0.0
    assert s.ti_leakage == 0.0


def test_erased_object_loses_structure():
    scene, edit, ideal = known(EditType.COLOR)
    image = ideal.image.copy()
    image[scene.masks[0]] = BACKGROUNDS["khaki"]
    s = score_edit(scene, edit, image, ideal=ideal)
    assert s.objects[0].structure_kept == 0.0 and s.objects[0].success == 0.0
    assert s.objects[1].structure_kept == 1.0


def test_lost_texture_is_not_kept():
    scene, edit, ideal = known(EditType.COLOR)
    flat = paint(ideal.image, scene.masks[1], "green")  # right colour, stripes lost
    s = score_edit(scene, edit, flat, ideal=ideal)
    assert s.objects[1].color_success == 1.0 and s.objects[1].material_kept == 0.0
    assert s.objects[0].material_kept == 1.0


def test_unknown_colours_do_not_count_as_the_target():
    scene, edit, ideal = known(EditType.COLOR)
    grey = ideal.image.copy()
    grey[scene.masks[0]] = (128, 128, 128)
    s = score_edit(scene, edit, grey, ideal=ideal)
    assert s.objects[0].color_success == 0.0 and s.objects[0].structure_kept == 0.0


def test_single_object_edit_has_no_ti():
    scene = render(two_object_spec())
    edit = make_edit(scene, EditType.COLOR, {1: {"color": "white"}})
    s = score_edit(scene, edit, render_edit(scene, edit).image)
    assert math.isnan(s.ti_leakage) and s.success == 1.0 and s.te_changed == 0.0


def test_noise_within_tolerance_does_not_change_scores():
    scene, edit, ideal = known(EditType.COLOR_OBJECT, noise=5)
    rng = np.random.default_rng(0)
    noisy = np.clip(ideal.image.astype(int) + rng.integers(-8, 9, ideal.image.shape), 0, 255).astype(np.uint8)
    s = score_edit(scene, edit, noisy, ideal=ideal)
    assert s.success == 1.0 and s.ti_leakage == 0.0 and s.te_changed == 0.0 and s.material_kept == 1.0


def test_wrong_image_size_is_rejected():
    scene, edit, ideal = known(EditType.COLOR)
    with pytest.raises(SyntheticError, match="resize"):
        score_edit(scene, edit, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SyntheticError, match="uint8"):
        score_edit(scene, edit, ideal.image.astype(float))


# ------------------------------------------------------------------------------------------
# metrics on random scenes


@pytest.mark.parametrize("edit_type", ALL_TYPES)
def test_random_scenes_perfect_and_copy(edit_type):
    for seed in range(40):
        scene = random_scene(seed, background_noise=3 * (seed % 2))
        edit = random_edit(scene, edit_type, seed)
        ideal = render_edit(scene, edit)
        perfect = score_edit(scene, edit, ideal.image, ideal=ideal).as_dict()
        for name, value in perfect.items():
            if not math.isnan(value):
                assert value == (0.0 if name.startswith(("ti_", "te_")) else 1.0), (seed, name, value)
        copy = score_edit(scene, edit, scene.image, ideal=ideal)
        assert copy.success == 0.0, seed
        assert copy.te_changed == 0.0 and (len(edit.objects) == 1 or copy.ti_leakage == 0.0)
