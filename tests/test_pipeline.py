import json

import numpy as np
import pytest
import torch
from PIL import Image

from aledit import ALEConfig, ALEEditPipeline
from aledit.edits import EditError, EditType
from aledit.masks import MaskError
from aledit.prompts import PhraseNotFoundError, PromptTooLongError


def scene(size=(80, 48)):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    m1 = np.zeros((size[1], size[0]), bool)
    m1[4:20, 4:30] = True
    m2 = np.zeros_like(m1)
    m2[24:44, 40:76] = True
    return img, {"cat": m1, "dog": m2}


EDITS = ["cat -> tiger", "dog -> leopard"]


def run(pipe, config=None, **kw):
    img, masks = scene()
    kw.setdefault("size", 64)
    kw.setdefault("steps", 3)
    return pipe.edit(img, EDITS, masks, config=config, progress=False, **kw)


def test_edit_output(pipe):
    out = run(pipe, return_attention=True)
    assert out.image.size == (80, 48)  # back to the input's size
    assert out.source_prompt == "cat and dog" and out.target_prompt == "tiger and leopard"
    assert out.edit_types == (EditType.OBJECT, EditType.OBJECT) and out.self_replace == 0.5
    assert out.masks.shape == (2, 16, 16) and out.background.shape == (16, 16)
    assert torch.equal(out.background, ~out.masks.any(0))
    assert out.attention_maps.shape == (2, 4, 4) and out.attention_maps.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    # deterministic under a seed, different under another
    again = run(pipe)
    assert torch.equal(again.latents.target_x0, out.latents.target_x0)
    assert not torch.equal(run(pipe, seed=1).latents.target_x0, out.latents.target_x0)


def test_non_square_working_size(pipe):
    out = run(pipe, size=(64, 40))
    assert out.masks.shape == (2, 10, 16) and out.image.size == (80, 48)


@pytest.mark.parametrize("switch", ["ore", "rgb_cam", "background_blend"])
def test_each_switch_changes_the_edit(pipe, switch):
    full = run(pipe, ALEConfig())
    ablated = run(pipe, ALEConfig(**{switch: False}))
    assert not torch.allclose(full.latents.target_x0, ablated.latents.target_x0)


def test_processors_are_restored_after_an_edit(pipe):
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    run(pipe)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before


def test_user_errors(pipe):
    img, masks = scene()
    with pytest.raises(EditError, match="no edits"):
        pipe.edit(img, [], masks)
    with pytest.raises(EditError, match="edited twice"):
        pipe.edit(img, ["cat -> tiger", "cat -> lion"], masks)
    with pytest.raises(MaskError, match="no mask for edited object"):
        pipe.edit(img, ["bird -> eagle"], masks, size=64)
    with pytest.raises(ValueError, match="multiple of 8"):
        pipe.edit(img, EDITS, masks, size=60)
    with pytest.raises(PromptTooLongError):
        long = [f"cat -> cat made of {'very ' * 80}shiny gold"]
        pipe.edit(img, long, masks, size=64)
    with pytest.raises(PhraseNotFoundError, match="'cat'"):
        pipe.edit(img, ["cat -> tiger"], masks, size=64, source_prompt="a dog on a sofa")


def test_source_prompt_gives_a_substituted_target_prompt(pipe):
    img, masks = scene()
    out = pipe.edit(img, EDITS, masks, size=64, steps=2, source_prompt="a cat next to a dog", progress=False)
    assert out.target_prompt == "a tiger next to a leopard"


def test_from_pretrained_local_folder(tmp_path, pipe):
    pipe.save_pretrained(tmp_path)
    # a checkpoint laid out like LCM_Dreamshaper_v7, with a safety checker entry we do not load
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(
        _class_name="LatentConsistencyModelPipeline",
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
        requires_safety_checker=True,
    )
    index_path.write_text(json.dumps(index))
    loaded = ALEEditPipeline.from_pretrained(str(tmp_path))
    assert isinstance(loaded, ALEEditPipeline)
    a, b = run(pipe), run(loaded)
    assert torch.equal(a.latents.target_x0, b.latents.target_x0)
    with pytest.raises(Exception):
        ALEEditPipeline.from_pretrained(str(tmp_path / "missing"))
