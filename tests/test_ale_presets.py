"""ALE's ``preset="authors"``: each choice of the authors' code, checked where it acts, and the
paper preset unchanged."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.attention import EditState
from aledit.attention.region_cross import RegionGuidance
from aledit.attention.state import SOURCE, TARGET
from aledit.hooks.background_blend import BackgroundBlend, background_region
from aledit.masks.ops import multiscale_nearest_union, resize_floor_nearest, resize_masks, resize_nearest
from aledit.methods import ALEConfig, ALEMethod, EditPlan, Guidance, MethodContext, make_method
from aledit.methods.ale import ALE_PRESETS, ALEImplementation
from aledit.ore import restrict_embeddings
from aledit.prompts import layout_prompt
from aledit.samplers import BranchLatents

AUTHORS = dataclasses.asdict(ALE_PRESETS["authors"])


def one_pixel(hw, at):
    mask = torch.zeros(hw, dtype=torch.bool)
    mask[at] = True
    return mask


# -- mask constructions, on planted masks (expected values computed by hand) --------------------


def test_floor_nearest_reads_the_top_left_pixel_of_each_cell():
    mask = one_pixel((8, 8), (0, 0))
    assert resize_floor_nearest(mask, (2, 2)).tolist() == [[True, False], [False, False]]
    assert not resize_nearest(mask, (2, 2)).any()  # centre pixels (2, 2), (2, 6), ... are empty
    shifted = one_pixel((8, 8), (2, 6))
    assert not resize_floor_nearest(shifted, (2, 2)).any()
    assert resize_nearest(shifted, (2, 2)).tolist() == [[False, True], [False, False]]
    assert resize_masks(shifted, (2, 2), "any-pool").tolist() == [[False, True], [False, False]]
    assert torch.equal(resize_masks(shifted, (2, 2), "nearest"), resize_floor_nearest(shifted, (2, 2)))


def test_multiscale_union_of_a_corner_pixel_covers_the_whole_latent():
    # 16x16 -> 8x8: at 1/8 (1x1) the only cell reads pixel (0, 0), so it is object and,
    # resized back, covers all 8x8 cells; any-pooling keeps one cell.
    mask = one_pixel((16, 16), (0, 0))
    assert multiscale_nearest_union(mask, (8, 8)).all()
    assert background_region(mask[None], (8, 8), "multiscale-nearest").sum() == 0
    assert background_region(mask[None], (8, 8), "any-pool").sum() == 63


def test_multiscale_union_by_hand():
    # Pixel (8, 4) of 16x16, latent 8x8. Full size (src 2i): cell (4, 2). Half (4x4, src 4i):
    # cell (2, 1), back at 8x8 cells (4..5, 2..3). Quarter (2x2, src 8i) misses column 4; 1x1 reads
    # pixel (0, 0). Union: the 2x2 block at rows 4-5, columns 2-3.
    mask = one_pixel((16, 16), (8, 4))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4:6, 2:4] = True
    assert torch.equal(multiscale_nearest_union(mask, (8, 8)), expected)
    # two objects: the union is taken first; any-pool gives the single cell per object
    other = one_pixel((16, 16), (15, 15))
    masks = torch.stack([mask, other])
    background = background_region(masks, (8, 8), "multiscale-nearest")
    assert torch.equal(~background, expected | resize_floor_nearest(other, (8, 8)))
    assert (~background).sum() == 4  # pixel (15, 15) is read by no level
    paper = ~background_region(masks, (8, 8), "any-pool")
    assert paper.nonzero().tolist() == [[4, 2], [7, 7]]


def test_rgb_cam_layer_masks_use_the_chosen_resize():
    masks = torch.stack([one_pixel((8, 8), (2, 6)), one_pixel((8, 8), (0, 0))])
    values = torch.zeros(3, 77, 4)
    paper = RegionGuidance(masks, ((1, 2), (3, 4)), values)
    authors = RegionGuidance(masks, ((1, 2), (3, 4)), values, mask_resize="nearest")
    assert paper.layer_masks((2, 2)).tolist() == [[[False, True], [False, False]], [[True, False], [False, False]]]
    assert authors.layer_masks((2, 2)).tolist() == [[[False, False], [False, False]], [[True, False], [False, False]]]
    # object 0 vanishes at 2x2 with nearest: its token is masked everywhere, its region is empty
    assert (authors.logit_bias((2, 2), 77)[:, 1] == -100.0).all()
    assert (paper.logit_bias((2, 2), 77)[:, 1] == -100.0).sum() == 3
    assert authors.blend_weights((2, 2))[1].sum() == 0 and paper.blend_weights((2, 2))[1].sum() == 1
    with pytest.raises(ValueError, match="mask_resize must be one of any-pool, nearest"):
        RegionGuidance(masks, ((1, 2), (3, 4)), values, mask_resize="bilinear")


# -- ORE ----------------------------------------------------------------------------------


def planted_ore(tokenizer, **choices):
    """ORE of "pink-colored wolf and moon" on planted encodings: every entry says where it came
    from (base: 1000 + position, object i's own encoding: 100 (i + 1) + position)."""
    phrases = ["pink-colored wolf", "moon"]
    base_layout = layout_prompt(tokenizer, "pink-colored wolf and moon", phrases)
    own_layouts = [layout_prompt(tokenizer, p, [p]) for p in phrases]
    positions = torch.arange(77, dtype=torch.float32)[:, None].expand(77, 2)
    base = 1000 + positions
    own = torch.stack([100 + positions, 200 + positions])
    return restrict_embeddings(base, own, base_layout, own_layouts, **choices), base_layout


def test_ore_base_indexing_on_a_planted_prompt(tokenizer):
    paper, layout = planted_ore(tokenizer)
    authors, _ = planted_ore(tokenizer, base_indexing="base-positions")
    assert layout.spans == ((1, 5), (6, 7)) and layout.eos_index == 7
    col = lambda e: e[:, 0].tolist()
    # paper: moon's own token sits at its own position 1; authors: own encoding at base position 6
    assert col(paper.base_restricted)[:8] == [1000, 101, 102, 103, 104, 1005, 201, 1007]
    assert col(authors.base_restricted)[:8] == [1000, 101, 102, 103, 104, 1005, 206, 1007]
    # e'_Oi is unchanged by the indexing: object i's own tokens at its base positions
    assert torch.equal(authors.objects, paper.objects)


def test_ore_zeroing_on_a_planted_prompt(tokenizer):
    paper, _ = planted_ore(tokenizer)
    authors, _ = planted_ore(tokenizer, zeroing="all-but-own")
    col = lambda e: e[:, 0].tolist()
    # the " and " token (position 5) is zero only in the authors' e'_Oi; the tails are object i's
    # own EOS and padding, aligned on the base EOS (position 7 <- own EOS 5 for the wolf, 2 for moon)
    assert col(paper.objects[0])[:9] == [1000, 101, 102, 103, 104, 1005, 0, 105, 106]
    assert col(authors.objects[0])[:9] == [1000, 101, 102, 103, 104, 0, 0, 105, 106]
    assert col(paper.objects[1])[:9] == [1000, 0, 0, 0, 0, 1005, 201, 202, 203]
    assert col(authors.objects[1])[:9] == [1000, 0, 0, 0, 0, 0, 201, 202, 203]
    assert torch.equal(authors.base_restricted, paper.base_restricted)
    with pytest.raises(ValueError, match="zeroing must be one of"):
        planted_ore(tokenizer, zeroing="all")


# -- rows, blend timing, config ------------------------------------------------------------


def test_paired_unconditional_rows():
    assert len(Guidance(1.0, 2.0).layout()) == 3
    paired = Guidance(1.0, 2.0, paired_uncond=True).layout()
    assert len(paired) == 4 and paired.index(SOURCE, False) is not None
    # the target's unconditional row now borrows the source's unconditional self-attention
    assert paired.source_partner(paired.index(TARGET, False)) == paired.index(SOURCE, False)
    assert len(Guidance(3.0, 1.0, paired_uncond=True).layout()) == 2  # no guidance at all, as the code
    assert len(Guidance(1.0, 2.0, embedded=True, paired_uncond=True).layout()) == 2


def test_authors_blend_skips_the_first_step_and_never_touches_x0():
    torch.manual_seed(0)
    lat = BranchLatents(*(torch.randn(1, 4, 4, 4) for _ in range(4)))
    background = torch.rand(4, 4) > 0.5
    hook = BackgroundBlend(background, start_step=1, blend_x0=False)
    assert hook(0, lat) is lat
    out = hook(1, lat)
    assert torch.equal(out.target[..., background], lat.source[..., background])
    assert torch.equal(out.target[..., ~background], lat.target[..., ~background])
    assert torch.equal(out.target_x0, lat.target_x0)
    eq4 = BackgroundBlend(background)(0, lat)
    assert torch.equal(eq4.target_x0[..., background], lat.source_x0[..., background])


def test_preset_selects_the_options_and_options_override_it():
    paper, authors = ALE_PRESETS["paper"], ALE_PRESETS["authors"]
    # the two presets differ in every choice
    assert all(getattr(paper, f.name) != getattr(authors, f.name) for f in dataclasses.fields(ALEImplementation))
    assert ALEConfig().implementation == paper
    assert ALEConfig(preset="authors").implementation == authors
    assert ALEConfig(**AUTHORS).implementation == authors
    mixed = ALEConfig(preset="authors", bb_mask="any-pool", paired_uncond=False).implementation
    assert mixed == dataclasses.replace(authors, bb_mask="any-pool", paired_uncond=False)
    assert make_method("ale", preset="authors").guidance == Guidance(1.0, 2.0, paired_uncond=True)
    for bad, message in [
        ({"preset": "official"}, "preset must be one of paper, authors"),
        ({"cam_mask": "bilinear"}, "cam_mask must be one of any-pool, nearest"),
        ({"paired_uncond": 1}, "paired_uncond must be true or false"),
    ]:
        with pytest.raises(ValueError, match=message):
            ALEConfig(**bad)
    with pytest.raises(ValueError, match="source_latent must be one of mode, sample"):
        EditPlan(row_embeddings=torch.zeros(1), choose_processor=lambda n, c: c, source_latent="mean")


def test_cli_preset_flag_and_option():
    from aledit.cli import build_parser
    from aledit.commands import UsageError, method_from_args

    parse = lambda *a: build_parser().parse_args(["edit", "in.png", "--edit", "a -> b", "--out", "o.png", *a])
    assert method_from_args(parse("--preset", "authors")) == ("ale", {"preset": "authors"})
    assert method_from_args(parse("--option", "preset=authors", "--option", "bb_timing=eq4")) == (
        "ale",
        {"preset": "authors", "bb_timing": "eq4"},
    )
    assert method_from_args(parse("--option", "paired_uncond=false"))[1] == {"paired_uncond": False}
    with pytest.raises(UsageError, match="preset must be one of paper, authors"):
        method_from_args(parse("--preset", "official"))
    with pytest.raises(UsageError, match="takes no option 'preset'"):
        method_from_args(parse("--method", "p2p", "--preset", "authors"))


# -- on the tiny model -------------------------------------------------------------------


def scene(size=64):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    cat = np.zeros((size, size), bool)
    cat[5:30, 8:40] = True
    dog = np.zeros((size, size), bool)
    dog[28:60, 30:62] = True
    return img, {"cat": cat, "dog": dog}


EDITS = ["cat -> pink-colored cat", "dog -> golden dog"]


def plan_of(pipe, config, masks):
    from aledit.edits import parse_edit
    from aledit.masks import ObjectMasks

    method = ALEMethod(config)
    state = EditState(method.guidance.layout(), 4, (16, 16))
    object_masks = ObjectMasks.from_sources(masks, ["cat", "dog"], (64, 64), config.dilation_ratio)
    edits = tuple(parse_edit(e) for e in EDITS)
    return method.plan(MethodContext(pipe.text_encoder, pipe.tokenizer, edits, object_masks, state)), object_masks


def test_plans_differ_exactly_in_the_listed_places(pipe):
    img, masks = scene()
    paper, object_masks = plan_of(pipe, ALEConfig(), masks)
    authors, _ = plan_of(pipe, ALEConfig(preset="authors"), masks)
    assert (paper.source_latent, authors.source_latent) == ("mode", "sample")
    assert paper.row_embeddings.shape[0] == 3 and authors.row_embeddings.shape[0] == 4
    (bb_paper,), (bb_authors,) = paper.hooks, authors.hooks
    assert (bb_paper.start_step, bb_paper.blend_x0) == (0, True)
    assert (bb_authors.start_step, bb_authors.blend_x0) == (1, False)
    union = object_masks.masks.any(dim=0)
    assert torch.equal(bb_authors.background, ~multiscale_nearest_union(union, (16, 16)))
    assert torch.equal(bb_paper.background, ~object_masks.at((16, 16)).any(dim=0))
    assert not torch.equal(bb_authors.background, bb_paper.background)
    cam = {}
    for name, plan in (("paper", paper), ("authors", authors)):
        processor = plan.choose_processor("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", None)
        cam[name] = processor.guidance
    for hw in ((16, 16), (8, 8)):
        assert torch.equal(cam["authors"].layer_masks(hw), resize_floor_nearest(object_masks.masks, hw))
        assert torch.equal(cam["paper"].layer_masks(hw), object_masks.at(hw))
    # ORE: the source row (e'_base of the source) and the values differ; the target keys do not
    layout_p = ALEMethod(ALEConfig()).guidance.layout()
    layout_a = ALEMethod(ALEConfig(preset="authors")).guidance.layout()
    row = lambda plan, lay, branch: plan.row_embeddings[lay.index(branch, True)]
    assert torch.equal(row(paper, layout_p, TARGET), row(authors, layout_a, TARGET))
    assert not torch.equal(row(paper, layout_p, SOURCE), row(authors, layout_a, SOURCE))
    assert not torch.equal(cam["paper"].value_embeddings, cam["authors"].value_embeddings)


def test_authors_edit_samples_the_source_latent_and_blends_from_step_one(pipe):
    img, masks = scene()
    seen = {}

    def record(step, lat):
        seen[step] = lat

    out = pipe.edit(img, EDITS, masks, options={"preset": "authors"}, size=64, steps=3, seed=5,
                    callback_on_step_end=record, progress=False)
    pixels = pipe.image_processor.preprocess(img, height=64, width=64)
    posterior = pipe.vae.encode(pixels).latent_dist
    sampled = posterior.sample(torch.Generator().manual_seed(5)) * pipe.vae.config.scaling_factor
    assert torch.equal(out.latents.source_x0, sampled)
    assert not torch.equal(out.latents.source_x0, pipe._encode_image(img, 64, 64))
    background = ~multiscale_nearest_union(torch.from_numpy(masks["cat"] | masks["dog"]), (16, 16))
    # (the masks are dilated by 0.01 of 64 px = 0 px, so the union is the planted one)
    keep = background.expand(1, 4, 16, 16)
    assert background.any()
    assert not torch.equal(seen[0].target[keep], seen[0].source[keep])  # no blend after step 0
    for step in (1, 2):
        assert torch.equal(seen[step].target[keep], seen[step].source[keep])
    assert not torch.equal(out.latents.target_x0[keep], out.latents.source_x0[keep])  # x0 never blended


def test_paper_preset_spelled_out_is_the_default_bit_for_bit(pipe):
    img, masks = scene()
    kw = dict(size=64, steps=2, seed=1, progress=False)
    default = pipe.edit(img, EDITS, masks, **kw)
    spelled = pipe.edit(img, EDITS, masks, options=dataclasses.asdict(ALE_PRESETS["paper"]), **kw)
    assert torch.equal(default.latents.target_x0, spelled.latents.target_x0)
    assert np.array_equal(np.asarray(default.image), np.asarray(spelled.image))
