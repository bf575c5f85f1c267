"""CPAM: preservation adaptation and localized extraction on bare Attention modules, mask
refinement as pure math, the plan and config, and runs on tiny-random and synthetic-tiny."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor
from PIL import Image

from aledit.attention import EditState
from aledit.attention.localized import CPAMMasks, LocalizedExtractionProcessor
from aledit.attention.masked_mutual import MaskedMutualSelfAttentionProcessor
from aledit.attention.schedule import StepRange
from aledit.attention.state import SOURCE, TARGET
from aledit.masks.ops import downsample_any
from aledit.masks.refine import area_kernel, dilate_square, refine_from_attention
from aledit.methods.base import Guidance
from aledit.methods.cpam import NEVER, CPAMConfig, CPAMMethod, FreeLayers, PreservationWindow, retain_start
from aledit.methods.registry import MethodError, make_config, method_info, parse_options

HW = (4, 4)
L = 16
Q = 16
LAYOUT = Guidance(1.0, 7.5).layout()  # CPAM's rows: source/cond (""), target/uncond, target/cond
SRC = LAYOUT.index(SOURCE, True)


def fixed_masks(state, source, target):
    return CPAMMasks(state, source, target, {}, refine_start_step=None)


def square(rows, cols, hw=HW):
    m = torch.zeros(hw, dtype=torch.bool)
    m[rows, cols] = True
    return m


def preservation(state, masks, task="edit", retain=True):
    object_keys = "background" if task == "remove" else "target"
    object_window = None if task == "remove" else (StepRange(0) if retain else NEVER)
    return MaskedMutualSelfAttentionProcessor(state, StepRange(0), masks, object_keys, object_window)


def weights_of(processor, state):
    """Run ``processor.attend`` with values that read out the attention weights: the source
    row's values are ``[I, 0]``, every target row's ``[0, I]``, so each output row is the
    query's weights over ``[source keys | target keys]`` (``[3, heads, L, 2L]``)."""
    torch.manual_seed(0)
    query, key = torch.randn(3, 2, L, 8), torch.randn(3, 2, L, 8)
    value = torch.zeros(3, 2, L, 2 * L)
    eye = torch.eye(L)
    for row in range(3):
        if row == SRC:
            value[row, :, :, :L] = eye
        else:
            value[row, :, :, L:] = eye
    attn = types.SimpleNamespace(scale=8**-0.5)
    return processor.attend(attn, query, key, value, None, is_cross=False), (query, key)


# -- preservation adaptation ---------------------------------------------------------------------


@torch.no_grad()
def test_all_background_mask_means_attention_over_source_keys_and_values_only():
    state = EditState(LAYOUT, 4, HW)
    none = torch.zeros(HW, dtype=torch.bool)
    torch.manual_seed(1)
    attn = Attention(query_dim=Q, heads=2, dim_head=8).eval()
    hidden = torch.randn(3, L, Q)
    attn.set_processor(preservation(state, fixed_masks(state, none, none)))
    out = attn(hidden)
    # reference: the target rows' queries against the source row's keys and values, plain
    q = attn.to_q(hidden).view(3, L, 2, 8).transpose(1, 2)
    k = attn.to_k(hidden).view(3, L, 2, 8).transpose(1, 2)
    v = attn.to_v(hidden).view(3, L, 2, 8).transpose(1, 2)
    for row in LAYOUT.rows_of(TARGET):
        ref = F.scaled_dot_product_attention(q[row], k[SRC], v[SRC], scale=attn.scale)
        ref = attn.to_out[0](ref.transpose(0, 1).reshape(L, 16))
        assert torch.allclose(out[row], ref, atol=1e-6)
    assert torch.allclose(out[SRC], AttnProcessor()(attn, hidden[SRC : SRC + 1])[0], atol=1e-6)


@torch.no_grad()
def test_retention_gives_object_queries_no_weight_outside_the_target_mask():
    state = EditState(LAYOUT, 4, HW)
    source = square(slice(1, 3), slice(1, 3))
    target = square(slice(0, 3), slice(0, 3))  # dilated: M_t covers M_s
    weights, _ = weights_of(preservation(state, fixed_masks(state, source, target)), state)
    s_in, t_in = source.flatten(), target.flatten()
    for row in LAYOUT.rows_of(TARGET):
        w = weights[row]  # [heads, L, 2L]
        assert torch.allclose(w.sum(-1), torch.ones(2, L), atol=1e-6)
        assert torch.all(w[:, :, L:] == 0)  # nobody reads the target's own keys
        inside = w[:, t_in]
        assert torch.all(inside[:, :, :L][:, :, ~t_in] == 0)  # object: source keys inside M_t only
        assert torch.all(inside[:, :, :L][:, :, t_in] > 0)
        outside = w[:, ~t_in]
        assert torch.all(outside[:, :, :L][:, :, s_in] == 0)  # background: source keys outside M_s only
        assert torch.all(outside[:, :, :L][:, :, ~s_in] > 0)


@torch.no_grad()
def test_without_retention_object_queries_keep_their_own_self_attention():
    state = EditState(LAYOUT, 4, HW)
    source = square(slice(1, 3), slice(1, 3))
    weights, _ = weights_of(preservation(state, fixed_masks(state, source, source), retain=False), state)
    t_in = source.flatten()
    for row in LAYOUT.rows_of(TARGET):
        inside = weights[row][:, t_in]
        assert torch.all(inside[:, :, :L] == 0) and torch.all(inside[:, :, L:] > 0)
        outside = weights[row][:, ~t_in]
        assert torch.all(outside[:, :, L:] == 0) and torch.all(outside[:, :, :L][:, :, t_in] == 0)


@torch.no_grad()
def test_removal_lets_every_target_query_read_only_the_source_background():
    state = EditState(LAYOUT, 4, HW)
    region = square(slice(1, 3), slice(1, 4))
    weights, _ = weights_of(preservation(state, fixed_masks(state, region, region), task="remove"), state)
    for row in LAYOUT.rows_of(TARGET):
        w = weights[row]
        assert torch.all(w[:, :, L:] == 0)
        assert torch.all(w[:, :, :L][:, :, region.flatten()] == 0)
        assert torch.all(w[:, :, :L][:, :, ~region.flatten()] > 0)


def test_free_layers_and_windows():
    free = FreeLayers(16, 0.1, seed=0)
    drawn = [free.free(step) for step in range(50)]
    assert all(len(d) == 2 for d in drawn)  # round(0.1 * 16)
    assert len(set(drawn)) > 10 and drawn == [free.free(step) for step in range(50)]  # random, seeded
    assert FreeLayers(7, 0.0).free(3) == frozenset()
    window = PreservationWindow(5, StepRange(0), 2, free)
    assert [window.active(s, 50) for s in range(50)] == [5 not in d for d in drawn]
    assert not PreservationWindow(1, StepRange(0), 2, free).active(0, 50)  # below its start layer
    assert retain_start(16, None) == 8 and retain_start(7, None) == 3 and retain_start(16, 7) == 7
    with pytest.raises(ValueError, match="below the UNet's 7"):
        retain_start(7, 7)


# -- localized extraction ------------------------------------------------------------------------


def cross_attn():
    torch.manual_seed(0)
    return Attention(query_dim=Q, cross_attention_dim=12, heads=2, dim_head=8).eval()


@torch.no_grad()
def test_localized_extraction_outside_the_mask_is_the_null_prompt_output():
    attn = cross_attn()
    state = EditState(LAYOUT, 4, HW)
    target_mask = square(slice(0, 2), slice(1, 4))
    inside = target_mask.flatten()
    torch.manual_seed(2)
    hidden, null, prompt = torch.randn(3, L, Q), torch.randn(5, 12), torch.randn(5, 12)
    context = torch.stack([null, null, prompt])  # the layout's rows: source "", target uncond, target cond
    attn.set_processor(LocalizedExtractionProcessor(state, fixed_masks(state, target_mask, target_mask), null))
    out = attn(hidden, encoder_hidden_states=context)
    attn.set_processor(AttnProcessor())
    plain_null = attn(hidden, encoder_hidden_states=torch.stack([null] * 3))
    plain = attn(hidden, encoder_hidden_states=context)
    cond = LAYOUT.index(TARGET, True)
    assert torch.allclose(out[cond][~inside], plain_null[cond][~inside], atol=1e-6)
    assert torch.allclose(out[cond][inside], plain[cond][inside], atol=1e-6)
    assert not torch.allclose(out[cond][~inside], plain[cond][~inside], atol=1e-3)
    assert torch.equal(out[SRC], plain[SRC]) or torch.allclose(out[SRC], plain[SRC], atol=1e-6)
    # another target prompt changes nothing outside M_t at this layer, and something inside
    attn.set_processor(LocalizedExtractionProcessor(state, fixed_masks(state, target_mask, target_mask), null))
    other = attn(hidden, encoder_hidden_states=torch.stack([null, null, torch.randn(5, 12)]))
    assert torch.equal(other[cond][~inside], out[cond][~inside])
    assert not torch.allclose(other[cond][inside], out[cond][inside], atol=1e-3)


# -- masks -------------------------------------------------------------------------------------


def test_area_kernel_and_square_dilation():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[10:30, 10:30] = True  # area 400: kernel int(20 * 0.1) = 2
    assert area_kernel(mask, 0.1) == 2 and area_kernel(mask, 0.001) == 0
    grown = dilate_square(mask, 2)
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[10:31, 10:31] = True  # an even side reaches one pixel further down/right
    assert torch.equal(grown, expected)
    grown3 = dilate_square(mask, 3)
    expected[9:31, 9:31] = True
    assert torch.equal(grown3, expected)
    assert torch.equal(dilate_square(mask, 1), mask)


def test_refinement_recovers_a_planted_blob():
    blob = torch.zeros(8, 8)
    blob[2:5, 3:7] = 1.0
    noise = torch.rand(3, 8, 8) * 0.2  # below 0.45 of the range everywhere
    maps = blob[None] * torch.tensor([1.0, 2.0, 3.0])[:, None, None] + noise
    refined = refine_from_attention(maps, (16, 16), threshold=0.45)
    expected = F.interpolate(blob[None, None], size=(16, 16), mode="nearest")[0, 0] > 0.5
    assert torch.equal(refined, expected)
    assert not refine_from_attention(torch.ones(2, 4, 4), (8, 8)).any()  # nothing to find


def test_cpam_masks_refine_the_target_from_the_next_step_on():
    state = EditState(LAYOUT, 4, (8, 8))
    source = torch.zeros(8, 8, dtype=torch.bool)
    source[0:2, 0:2] = True
    masks = CPAMMasks(state, source, source, {TARGET: (1, 2)}, refine_start_step=1)
    probs = torch.full((2, 16, 5), 0.01)  # a 4x4 layer, 5 tokens; the blob on the words 1 and 2
    blob = torch.zeros(4, 4, dtype=torch.bool)
    blob[1:3, 2:4] = True
    probs[:, blob.flatten(), 1:3] = 0.5
    masks.add(TARGET, probs, (4, 4))
    assert torch.equal(masks.at((8, 8))[1].reshape(8, 8), source)  # step 0: M_t as given
    state.step = 1
    expected = F.interpolate(blob[None, None].float(), size=(8, 8), mode="nearest")[0, 0] > 0.5
    assert torch.equal(masks.at((8, 8))[1].reshape(8, 8), expected)
    assert torch.equal(masks.at((8, 8))[0].reshape(8, 8), source)  # M_s stays
    assert len(masks.history) == 1 and torch.equal(masks.history[0], expected)


# -- method, config, runs -------------------------------------------------------------------------


def test_registry_config_and_cli_options():
    info = method_info("cpam")
    assert info.default_steps == 50 and info.default_size == 512 and "stable-diffusion-v1-5" in info.default_model
    cfg = CPAMConfig()
    assert (cfg.task, cfg.guidance, cfg.retain_start_step, cfg.refine_threshold) == ("edit", 7.5, 3, 0.45)
    assert (cfg.target_dilation, cfg.free_fraction, cfg.refine_start_step) == (0.1, 0.1, 1)
    assert parse_options("cpam", ["task=retain", "retain_start_layer=none"]) == {"task": "retain", "retain_start_layer": None}
    with pytest.raises(MethodError, match="task must be one of edit, retain, background, remove"):
        make_config("cpam", {"task": "erase"})
    with pytest.raises(MethodError, match="refine_threshold"):
        make_config("cpam", {"refine_threshold": 1.5})
    assert CPAMMethod().guidance == Guidance(1.0, 7.5) and CPAMMethod().dilation_ratio == 0.0


def test_cli_task_shortcut():
    import argparse

    from aledit.commands import UsageError, add_method_options, method_from_args

    p = argparse.ArgumentParser()
    add_method_options(p)
    assert method_from_args(p.parse_args(["--method", "cpam", "--task", "remove"])) == ("cpam", {"task": "remove"})
    with pytest.raises(UsageError, match="takes no option 'task'"):
        method_from_args(p.parse_args(["--method", "masactrl", "--task", "retain"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "cpam", "--task", "erase"])


@pytest.fixture(scope="module")
def edit_pipe():
    from aledit.pipeline import EditPipeline

    return EditPipeline.from_pretrained("tiny-random")


def scene():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (200, 220, 200)
    image[8:40, 16:48] = (200, 30, 30)
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    return Image.fromarray(image), {"cat": mask}


@pytest.mark.parametrize("task", ["edit", "retain", "background", "remove"])
def test_tasks_run_and_return_their_masks(edit_pipe, task):
    image, masks = scene()
    out = edit_pipe.edit(image, ["cat -> tiger"], masks, method="cpam", options={"task": task}, steps=3, size=64, progress=False)
    assert out.method == "cpam" and torch.isfinite(out.latents.target_x0).all()
    source, target = out.extras["cpam_source_mask"], out.extras["cpam_target_mask"]
    obj = downsample_any(torch.from_numpy(masks["cat"]), tuple(source.shape))
    if task == "background":
        assert torch.equal(source, ~obj) and torch.equal(target, ~obj)  # inverted, barely dilated
    else:
        assert torch.equal(source & obj, obj) and torch.equal(target & source, source)
    refined = out.extras["cpam_refined_masks"]
    assert len(refined) == (2 if task in ("edit", "retain") else 0)  # refined after steps 0 and 1
    assert out.extras["cpam_retain_layers"] == (() if task != "retain" else out.extras["cpam_retain_layers"])


def test_without_masks_the_source_mask_comes_from_attention(edit_pipe):
    image, _ = scene()
    out = edit_pipe.edit(image, ["cat -> tiger"], None, method="cpam", steps=3, size=64, progress=False)
    assert out.extras["cpam_source_mask"] is None and out.source_prompt == "cat"
    assert len(out.extras["cpam_refined_masks"]) == 2
    from aledit.masks.ops import MaskError

    with pytest.raises(MaskError, match="needs the object's mask"):
        edit_pipe.edit(image, ["cat -> tiger"], None, method="cpam", options={"task": "remove"}, steps=2, size=64, progress=False)


def test_preservation_and_extraction_change_the_edit(edit_pipe):
    image, masks = scene()
    run = lambda **o: edit_pipe.edit(image, ["cat -> tiger"], masks, method="cpam", options=o, steps=3, size=64, progress=False)
    full = run(free_fraction=0.0)
    off = run(free_fraction=0.0, background_start_step=100, localized_extraction=False, refine=False)
    assert not torch.equal(full.latents.target_x0, off.latents.target_x0)


# -- the synthetic world: what each task preserves, against the autoencoder's own floor -------------


@pytest.fixture(scope="module")
def synthetic_case():
    from aledit.pipeline import EditPipeline
    from aledit.synthetic.bench import bench_cases
    from aledit.synthetic.model import synthetic_model_path

    pipe = EditPipeline.from_pretrained(synthetic_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe, bench_cases(1, seed=0)[0]  # a colour edit of one object in a 3-object scene


def same_classes(pipe_image, case):
    """``bool [H, W]``: pixels whose palette class (colour, shade, background) is the source's."""
    from aledit.synthetic.metrics import classify_pixels

    background = case.scene.spec.background
    classes = lambda img: np.stack([(c := classify_pixels(img, background)).color, c.shade, c.background])
    return (classes(np.asarray(pipe_image.convert("RGB"))) == classes(case.scene.image)).all(axis=0)


def test_synthetic_retain_keeps_the_background_and_background_task_keeps_the_object(synthetic_case):
    """Pixels CPAM should keep (outside ``M_t`` in ``retain``, the object in ``background``) keep
    their exact palette class about as often as a plain VAE round trip does (the autoencoder's
    floor): CPAM preserves through attention, with no latent blend, so exact pixel equality is
    not what it promises. Measured at 10 steps: retain 0.950 vs floor 0.942; background task
    0.770 vs floor 0.826, against 0.335 without preservation and localized extraction."""
    pipe, case = synthetic_case
    image = Image.fromarray(case.scene.image)
    obj = np.any(np.stack(list(case.masks.values())), axis=0)
    grown = dilate_square(torch.from_numpy(obj), area_kernel(torch.from_numpy(obj), 0.1)).numpy()
    latent = pipe._encode_image(image, 64, 64)
    floor = same_classes(pipe._decode(latent), case)

    def run(**options):
        out = pipe.edit(image, case.edit.edits, case.masks, method="cpam", options={"guidance": 8.0, **options},
                        steps=10, size=64, progress=False)
        return same_classes(out.image, case)

    kept = run(task="retain")[~grown].mean()
    assert kept >= floor[~grown].mean() - 0.01
    kept_object = run(task="background")[obj].mean()
    unpreserved = run(task="background", background_start_step=100, localized_extraction=False)[obj].mean()
    assert kept_object >= floor[obj].mean() - 0.1
    assert kept_object >= unpreserved + 0.3
