"""Grounded-SAM mask provider and the on-disk mask cache.

The box -> mask -> union -> dilation logic is checked pixel by pixel with a detector double (given
boxes) and a segmenter double (fills boxes). The transformers plumbing is checked end to end with
tiny random GroundingDINO and SAM models built from configs, and a tiny BERT tokenizer written
here (no download).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aledit.masks import MaskError, MaskProvider, exclusive_regions
from aledit.masks import cache as cache_module
from aledit.masks.cache import (
    PNG_KEY_CHUNK,
    CachedMaskProvider,
    image_digest,
    stable_json,
)
from aledit.masks.grounded_sam import (
    Detections,
    Detector,
    GroundedSAM,
    GroundingDinoDetector,
    ObjectNotFoundError,
    SamSegmenter,
    Segmenter,
    center_boxes_to_corners,
    grounding_prompt,
    grounding_scores,
    select_boxes,
    union_masks,
)

W, H = 20, 16


# -- doubles ------------------------------------------------------------------------------------


class GivenBoxes:
    """Detector double: fixed ``[(box, score[, text_score]), ...]`` per phrase."""

    def __init__(self, table: dict[str, list[tuple]]):
        self.table = table
        self.calls: list[str] = []

    def __call__(self, image, phrase):
        self.calls.append(phrase)
        rows = self.table.get(phrase, [])
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        scores = torch.tensor([r[1] for r in rows], dtype=torch.float32)
        text = torch.tensor([r[2] if len(r) > 2 else r[1] for r in rows], dtype=torch.float32)
        return Detections(boxes, scores, text)


class FillBoxes:
    """Segmenter double: the mask of box (x0, y0, x1, y1) is pixels x0..x1-1, y0..y1-1."""

    def __init__(self, empty: bool = False):
        self.calls: list[torch.Tensor] = []
        self.empty = empty

    def __call__(self, image, boxes):
        self.calls.append(boxes.clone())
        masks = torch.zeros(boxes.shape[0], image.size[1], image.size[0], dtype=torch.bool)
        if not self.empty:
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[k, y0:y1, x0:x1] = True
        return masks


def rectangles(hw, *boxes):
    out = torch.zeros(hw, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] = True
    return out


def dilated_by_hand(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within Euclidean distance ``radius`` of an object pixel (explicit loops)."""
    h, w = mask.shape
    on = [(y, x) for y in range(h) for x in range(w) if mask[y, x]]
    out = torch.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            out[y, x] = any((y - v) ** 2 + (x - u) ** 2 <= radius * radius for v, u in on)
    return out


def blank(w=W, h=H, mode="RGB"):
    return Image.new(mode, (w, h))


# -- pure pieces --------------------------------------------------------------------------------


def test_doubles_satisfy_the_protocols():
    assert isinstance(GivenBoxes({}), Detector)
    assert isinstance(FillBoxes(), Segmenter)
    assert isinstance(GroundedSAM(GivenBoxes({}), FillBoxes()), MaskProvider)


def test_select_boxes_thresholds_are_strict_and_both_apply():
    d = Detections(
        torch.arange(16, dtype=torch.float32).reshape(4, 4),
        torch.tensor([0.45, 0.46, 0.90, 0.90]),
        torch.tensor([0.90, 0.90, 0.40, 0.41]),
    )
    kept = select_boxes(d, box_threshold=0.45, text_threshold=0.40)
    assert kept.scores.tolist() == pytest.approx([0.46, 0.90])
    assert torch.equal(kept.boxes, d.boxes[[1, 3]])
    # without text scores, the box score is used for both thresholds
    assert len(select_boxes(Detections(d.boxes, d.scores), 0.45, 0.46)) == 2


def test_detections_check_shapes():
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        Detections(torch.zeros(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="scores"):
        Detections(torch.zeros(3, 4), torch.zeros(2))


def test_union_masks_dilates_the_union():
    masks = torch.stack([rectangles((H, W), (2, 3, 5, 6)), rectangles((H, W), (4, 5, 9, 8))])
    union = rectangles((H, W), (2, 3, 5, 6), (4, 5, 9, 8))
    assert torch.equal(union_masks(masks, 0), union)
    assert torch.equal(union_masks(masks, 2), dilated_by_hand(union, 2))
    assert not union_masks(torch.zeros(0, H, W, dtype=torch.bool)).any()


def test_grounding_prompt_and_scores():
    assert grounding_prompt("  Red   Shoe. ") == "red shoe."
    assert grounding_prompt("st. bernard") == "st bernard."
    with pytest.raises(MaskError, match="empty phrase"):
        grounding_prompt(" . ")
    probs = torch.tensor([[0.9, 0.2, 0.3, 0.8], [0.1, 0.6, 0.4, 0.0]])
    box, text = grounding_scores(probs, torch.tensor([False, True, True, False]))
    assert box.tolist() == pytest.approx([0.9, 0.6])
    assert text.tolist() == pytest.approx([0.3, 0.6])


def test_center_boxes_to_corners_scales_width_and_height_and_clips():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.4, 0.4]])
    out = center_boxes_to_corners(boxes, (200, 100))
    assert torch.allclose(out, torch.tensor([[50.0, 25.0, 150.0, 75.0], [140.0, 0.0, 200.0, 30.0]]))


# -- GroundedSAM with doubles: exact pixels -----------------------------------------------------


def test_boxes_to_mask_union_and_dilation_exact_pixels():
    table = {"footwear": [((2, 3, 5, 6), 0.9), ((12, 8, 16, 12), 0.8), ((0, 0, W, H), 0.2)]}
    boxes = (2, 3, 5, 6), (12, 8, 16, 12)  # the 0.2 box is below the threshold
    raw = GroundedSAM(GivenBoxes(table), FillBoxes(), box_threshold=0.45, text_threshold=0.4)(blank(), ["footwear"])
    assert set(raw) == {"footwear"}
    assert raw["footwear"].dtype == torch.bool and raw["footwear"].shape == (H, W)
    assert torch.equal(raw["footwear"], rectangles((H, W), *boxes))

    # ratio 0.1 of the longer side (20 px) -> radius 2
    grown = GroundedSAM(GivenBoxes(table), FillBoxes(), dilation_ratio=0.1)(blank(), ["footwear"])
    assert torch.equal(grown["footwear"], dilated_by_hand(rectangles((H, W), *boxes), 2))


def test_one_segmenter_call_for_all_phrases_and_duplicates_found_once():
    detector, segmenter = GivenBoxes({"cat": [((1, 1, 4, 4), 0.9)], "dog": [((6, 6, 9, 9), 0.7)]}), FillBoxes()
    masks = GroundedSAM(detector, segmenter)(blank(mode="L"), ["cat", "dog", "cat"])
    assert list(masks) == ["cat", "dog"]
    assert detector.calls == ["cat", "dog"]
    assert len(segmenter.calls) == 1 and segmenter.calls[0].shape == (2, 4)
    assert torch.equal(masks["dog"], rectangles((H, W), (6, 6, 9, 9)))


def test_overlapping_objects_both_keep_the_overlap():
    table = {"cat": [((2, 2, 10, 10), 0.9)], "hat": [((6, 6, 14, 14), 0.9)]}
    masks = GroundedSAM(GivenBoxes(table), FillBoxes())(blank(), ["cat", "hat"])
    overlap = rectangles((H, W), (6, 6, 10, 10))
    assert torch.equal(masks["cat"], rectangles((H, W), (2, 2, 10, 10)))
    assert torch.equal(masks["hat"], rectangles((H, W), (6, 6, 14, 14)))
    assert (masks["cat"] & masks["hat"]).equal(overlap)
    # the engine, not the provider, decides: overlaps go to the base prompt
    objects, base = exclusive_regions(torch.stack([masks["cat"], masks["hat"]]))
    assert base[overlap].all() and not objects[:, overlap].any()


def test_object_not_found_names_phrase_best_score_and_fixes():
    table = {"cat": [((1, 1, 4, 4), 0.9)], "red shoe": [((1, 1, 4, 4), 0.31), ((5, 5, 8, 8), 0.12)]}
    segmenter = FillBoxes()
    with pytest.raises(ObjectNotFoundError) as info:
        GroundedSAM(GivenBoxes(table), segmenter)(blank(), ["cat", "red shoe", "unicorn"])
    err = info.value
    assert isinstance(err, MaskError)
    assert err.phrases == ("red shoe", "unicorn") and err.phrase == "red shoe"
    assert err.best_score == pytest.approx(0.31) and err.best_scores["unicorn"] is None
    text = str(err)
    assert "'red shoe'" in text and "0.310" in text and "0.45" in text
    assert "'unicorn'" in text and "no box" in text
    assert "--box-threshold" in text and "--mask 'red shoe=PATH'" in text and "differently" in text
    assert segmenter.calls == []  # nothing segmented when a phrase is missing


def test_object_not_found_by_text_threshold_says_so():
    table = {"cat": [((1, 1, 4, 4), 0.9, 0.2)]}
    with pytest.raises(ObjectNotFoundError, match=r"(?s)0\.900.*0\.200.*text threshold 0\.4"):
        GroundedSAM(GivenBoxes(table), FillBoxes())(blank(), ["cat"])


def test_empty_segmentation_is_an_error_not_an_empty_mask():
    table = {"cat": [((1, 1, 4, 4), 0.9)]}
    with pytest.raises(ObjectNotFoundError, match="empty mask") as info:
        GroundedSAM(GivenBoxes(table), FillBoxes(empty=True))(blank(), ["cat"])
    assert info.value.best_score == pytest.approx(0.9)


def test_bad_inputs_and_settings():
    provider = GroundedSAM(GivenBoxes({}), FillBoxes())
    with pytest.raises(TypeError, match="wrap it"):
        provider(blank(), "cat")
    with pytest.raises(MaskError, match="non-empty"):
        provider(blank(), ["  "])
    with pytest.raises(ValueError, match="box_threshold"):
        GroundedSAM(GivenBoxes({}), FillBoxes(), box_threshold=-0.1)
    with pytest.raises(MaskError, match="dilation"):
        GroundedSAM(GivenBoxes({}), FillBoxes(), dilation_ratio=-1)


def test_cache_key_is_json_and_tracks_settings():
    provider = GroundedSAM(GivenBoxes({}), FillBoxes(), box_threshold=0.3)
    key = provider.cache_key()
    assert json.loads(stable_json(key)) == key
    assert key["box_threshold"] == 0.3 and key["dilation_ratio"] == 0.0
    assert key["detector"]["class"].endswith("GivenBoxes")


# -- tiny transformers models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_grounded_sam(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
        SwinConfig,
    )

    try:  # transformers >= 5: PIL-backed image processors (no torchvision)
        from transformers import GroundingDinoImageProcessorPil as DinoImages
        from transformers import SamImageProcessorPil as SamImages
    except ImportError:  # transformers 4.x
        from transformers import GroundingDinoImageProcessor as DinoImages
        from transformers import SamImageProcessor as SamImages

    # BERT vocabulary with bert-base-uncased's ids for the tokens GroundingDINO treats as special
    # ([CLS] 101, [SEP] 102, "." 1012, "?" 1029), so its text self-attention masks are right.
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[filler{i}]" for i in range(len(vocab), 1012)] + ["."]
    vocab += [f"[filler{i}]" for i in range(len(vocab), 1029)] + ["?"]
    vocab += ["a", "red", "shoe", "cat", "dog", "hat", "blue", "wooden", "table", "foot", "##wear"]
    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    assert tokenizer("red shoe.").input_ids[0] == 101 and tokenizer("red shoe.").input_ids[-2:] == [1012, 102]

    torch.manual_seed(0)
    # sizes after transformers' own tests (tests/models/grounding_dino, tests/models/sam), smaller
    swin = SwinConfig(
        window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=128,
        out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4],
    )
    text = {
        "model_type": "bert", "vocab_size": len(vocab), "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16,
    }
    dino_config = GroundingDinoConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=8, decoder_ffn_dim=8, num_queries=12, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, use_timm_backbone=False, backbone_config=swin, max_text_len=16, text_config=text,
    )
    dino = GroundingDinoForObjectDetection(dino_config).eval()
    dino_processor = GroundingDinoProcessor(
        image_processor=DinoImages(size={"shortest_edge": 128, "longest_edge": 128}), tokenizer=tokenizer
    )
    sam_config = SamConfig(
        vision_config=SamVisionConfig(
            image_size=32, patch_size=4, hidden_size=16, projection_dim=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=16, output_channels=16, window_size=4,
            global_attn_indexes=[0], num_pos_feats=8, mlp_dim=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            image_size=32, patch_size=4, hidden_size=16, mask_input_channels=4, num_point_embeddings=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=16, num_hidden_layers=1, num_attention_heads=2, iou_head_depth=1,
            iou_head_hidden_dim=8,
        ),
    )
    sam = SamModel(sam_config).eval()
    sam_processor = SamProcessor(
        image_processor=SamImages(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32})
    )
    return {"version": transformers.__version__, "parts": (dino, dino_processor, sam, sam_processor)}


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))  # W 80, H 48: not square


def test_tiny_grounding_dino_detector(tiny_grounded_sam, photo):
    dino, processor, _, _ = tiny_grounded_sam["parts"]
    detections = GroundingDinoDetector(dino, processor)(photo, "Red shoe")
    assert len(detections) == dino.config.num_queries
    boxes = detections.boxes
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 80).all() and (boxes[:, [1, 3]] <= 48).all()
    assert ((detections.scores >= 0) & (detections.scores <= 1)).all()
    # the phrase's tokens are a subset of all positions
    assert (detections.text_scores <= detections.scores + 1e-6).all()


def test_tiny_sam_segmenter(tiny_grounded_sam, photo):
    _, _, sam, processor = tiny_grounded_sam["parts"]
    boxes = torch.tensor([[4.0, 2.0, 40.0, 30.0], [30.0, 10.0, 78.0, 46.0], [0.0, 0.0, 80.0, 48.0]])
    masks = SamSegmenter(sam, processor)(photo, boxes)
    assert masks.shape == (3, 48, 80) and masks.dtype == torch.bool
    assert torch.equal(SamSegmenter(sam, processor, boxes_per_batch=2)(photo, boxes), masks)
    assert SamSegmenter(sam, processor)(photo, torch.zeros(0, 4)).shape == (0, 48, 80)


def test_tiny_grounded_sam_end_to_end(tiny_grounded_sam, photo):
    provider = GroundedSAM.from_models(*tiny_grounded_sam["parts"], box_threshold=0.0, text_threshold=0.0)
    masks = provider(photo, ["red shoe", "cat"])
    assert list(masks) == ["red shoe", "cat"]
    for mask in masks.values():
        assert mask.shape == (48, 80) and mask.dtype == torch.bool and mask.any()
    key = provider.cache_key()
    assert key["detector"]["kind"] == "grounding-dino" and key["segmenter"]["kind"] == "sam"
    stable_json(key)


def test_tiny_detector_above_every_score_raises(tiny_grounded_sam, photo):
    provider = GroundedSAM.from_models(*tiny_grounded_sam["parts"], box_threshold=1.01)
    with pytest.raises(ObjectNotFoundError) as info:
        provider(photo, ["red shoe"])
    err = info.value
    assert err.phrase == "red shoe" and 0.0 <= err.best_score <= 1.0
    assert "'red shoe'" in str(err) and f"{err.best_score:.3f}" in str(err) and "1.01" in str(err)


def test_from_pretrained_local_folders(tiny_grounded_sam, photo, tmp_path):
    dino, dino_processor, sam, sam_processor = tiny_grounded_sam["parts"]
    dino.save_pretrained(tmp_path / "dino")
    dino_processor.save_pretrained(tmp_path / "dino")
    sam.save_pretrained(tmp_path / "sam")
    sam_processor.save_pretrained(tmp_path / "sam")
    provider = GroundedSAM.from_pretrained(
        detector=str(tmp_path / "dino"), segmenter=str(tmp_path / "sam"), device="cpu", local_files_only=True,
        box_threshold=0.0, text_threshold=0.0,
    )
    assert provider.cache_key()["detector"]["model"] == str(tmp_path / "dino")
    reference = GroundedSAM.from_models(dino, dino_processor, sam, sam_processor, box_threshold=0.0, text_threshold=0.0)
    loaded, built = provider(photo, ["cat"]), reference(photo, ["cat"])
    assert torch.equal(loaded["cat"], built["cat"])

    with pytest.raises(OSError, match=r"(?s)could not load the GroundingDINO detector.*detector='/path/to/folder'"):
        GroundedSAM.from_pretrained(detector=str(tmp_path / "missing"), segmenter=str(tmp_path / "sam"),
                                    device="cpu", local_files_only=True)


# -- the mask cache -----------------------------------------------------------------------------


class CountingProvider:
    """Provider double: box-shaped masks; counts calls; ``threshold`` is part of its cache key."""

    def __init__(self, threshold=0.5):
        self.threshold = threshold
        self.calls: list[list[str]] = []

    def cache_key(self):
        return {"threshold": self.threshold}

    def __call__(self, image, phrases):
        self.calls.append(list(phrases))
        w, h = image.size
        return {p: rectangles((h, w), (len(p) % w, 1, w, h - 1)) for p in phrases}


def noisy(seed=0, w=W, h=H):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_cache_hit_and_miss(tmp_path):
    provider = CountingProvider()
    cached = CachedMaskProvider(provider, tmp_path)
    image = noisy()
    first = cached(image, ["cat", "hat"])
    assert provider.calls == [["cat", "hat"]] and (cached.hits, cached.misses) == (0, 2)
    second = cached(image.copy(), ["cat", "hat"])  # same pixels, another object: hit
    assert provider.calls == [["cat", "hat"]] and cached.hits == 2
    assert all(torch.equal(first[p], second[p]) and second[p].dtype == torch.bool for p in first)
    # a fresh wrapper over the same folder (a re-run) never recomputes
    rerun = CachedMaskProvider(CountingProvider(), tmp_path)
    rerun(image, ["hat", "cat"])
    assert rerun.provider.calls == [] and rerun.hits == 2
    # only the missing phrase reaches the provider
    cached(image, ["cat", "dog"])
    assert provider.calls[-1] == ["dog"]


def test_cache_misses_on_other_image_or_settings(tmp_path):
    provider = CountingProvider()
    cached = CachedMaskProvider(provider, tmp_path)
    image = noisy()
    cached(image, ["cat"])
    changed = image.copy()
    changed.putpixel((0, 0), (1, 2, 3) if image.getpixel((0, 0)) != (1, 2, 3) else (4, 5, 6))
    cached(changed, ["cat"])
    cached(image.convert("RGBA"), ["cat"])  # same colours, other mode
    cached(image, ["Cat"])  # phrases are exact
    provider.threshold = 0.4  # a setting the provider reports
    cached(image, ["cat"])
    assert len(provider.calls) == 5
    CachedMaskProvider(provider, tmp_path, key_parts={"weights": "v2"})(image, ["cat"])
    assert len(provider.calls) == 6
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_cache_writes_atomically(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        assert not os.path.exists(dst), "the final file must not exist before the rename"
        assert os.path.dirname(src) == os.path.dirname(dst) and src.endswith(".tmp")
        with Image.open(src) as im:  # the temporary file is complete when renamed
            im.load()
        seen.append(os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", spy)
    cached = CachedMaskProvider(CountingProvider(), tmp_path)
    image = noisy()
    masks = cached(image, ["cat"])
    path = cached.path_for(image, "cat")
    assert seen == [str(path)] and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with Image.open(path) as im:
        assert im.mode == "L"
        key = json.loads(im.text[PNG_KEY_CHUNK])
        assert torch.equal(torch.from_numpy(np.asarray(im) > 0), masks["cat"])
    assert key["phrase"] == "cat" and key["image"] == image_digest(image)
    assert key["provider"]["settings"] == {"threshold": 0.5}


def test_cache_write_failure_leaves_no_file_and_still_returns(tmp_path, monkeypatch, caplog):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    provider = CountingProvider()
    masks = CachedMaskProvider(provider, tmp_path)(noisy(), ["cat"])
    assert masks["cat"].any() and list(tmp_path.iterdir()) == []
    assert "disk full" in caplog.text


def test_cache_recomputes_unreadable_files(tmp_path):
    provider = CountingProvider()
    cached = CachedMaskProvider(provider, tmp_path)
    image = noisy()
    cached.path_for(image, "cat").write_bytes(b"not a png")
    masks = cached(image, ["cat"])
    assert provider.calls == [["cat"]] and masks["cat"].any()
    cached(image, ["cat"])
    assert len(provider.calls) == 1


def test_cache_needs_a_key_and_a_mask_per_phrase(tmp_path):
    with pytest.raises(ValueError, match="key_parts"):
        CachedMaskProvider(lambda image, phrases: {}, tmp_path)
    with pytest.raises(TypeError, match="JSON"):
        CachedMaskProvider(CountingProvider(), tmp_path, key_parts={"dtype": torch.float16})
    with pytest.raises(MaskError, match="no mask for 'cat'"):
        CachedMaskProvider(lambda image, phrases: {}, tmp_path, key_parts={"v": 1})(noisy(), ["cat"])


def test_cached_grounded_sam(tmp_path):
    detector = GivenBoxes({"cat": [((1, 1, 4, 4), 0.9)]})
    provider = GroundedSAM(detector, FillBoxes())
    cached = CachedMaskProvider(provider, tmp_path)
    assert isinstance(cached, MaskProvider)
    first = cached(blank(), ["cat"])
    cached(blank(), ["cat"])
    assert detector.calls == ["cat"]
    provider.box_threshold = 0.5  # settings are read at each call
    assert torch.equal(cached(blank(), ["cat"])["cat"], first["cat"])
    assert detector.calls == ["cat", "cat"]


# -- the command line ---------------------------------------------------------------------------


def test_cli_masks_and_edit_with_local_grounded_sam(tiny_grounded_sam, photo, tmp_path, capsys):
    from aledit.cli import main

    dino, dino_processor, sam, sam_processor = tiny_grounded_sam["parts"]
    for model, processor, name in ((dino, dino_processor, "dino"), (sam, sam_processor, "sam")):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    photo.save(tmp_path / "photo.png")
    common = [
        "--detector", str(tmp_path / "dino"), "--segmenter", str(tmp_path / "sam"), "--device", "cpu",
        "--box-threshold", "0", "--text-threshold", "0", "--mask-cache", str(tmp_path / "cache"),
    ]
    out = tmp_path / "masks"
    assert main(["masks", str(tmp_path / "photo.png"), "--object", "red shoe", "--object", "cat", "--out", str(out), *common]) == 0
    assert sorted(os.listdir(out)) == ["cat.png", "overlay.png", "red shoe.png"]
    assert Image.open(out / "cat.png").size == (80, 48)
    assert len(os.listdir(tmp_path / "cache")) == 2
    # the edit finds its masks the same way (from the cache) when no --mask is given
    code = main([
        "edit", str(tmp_path / "photo.png"), "--edit", "cat -> tiger", "--model", "tiny-random", "--size", "64",
        "--steps", "2", "--out", str(tmp_path / "edit.png"), "--save-masks", str(tmp_path / "used"), *common,
    ])
    assert code == 0 and (tmp_path / "edit.png").exists()
    assert sorted(os.listdir(tmp_path / "used")) == ["cat.png", "overlay.png"]
    assert len(os.listdir(tmp_path / "cache")) == 2
    # not found: one clear line naming the phrase and its best score
    capsys.readouterr()
    code = main(["masks", str(tmp_path / "photo.png"), "--object", "cat", "--out", str(out), "--no-mask-cache",
                 *common[:-4], "--box-threshold", "1"])  # a score is never above 1
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "could not find 'cat'" in err[0] and "--box-threshold" in err[0]


def test_cli_grounded_sam_that_cannot_load_is_one_line(tmp_path, capsys, monkeypatch):
    from aledit.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blank().save(tmp_path / "photo.png")
    code = main(["masks", str(tmp_path / "photo.png"), "--object", "cat", "--out", str(tmp_path / "m"),
                 "--detector", str(tmp_path / "none"), "--segmenter", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "could not load Grounded-SAM" in err[0] and "--mask-provider attention" in err[0]
