import numpy as np
import pytest
import torch
from PIL import Image

from aledit.masks import MaskError
from aledit.attention.recording import RecordingAttnProcessor
from aledit.masks.attention import AttentionMasks, agreement_scores, kmeans, masks_from_attention


def block_self_attention(labels: torch.Tensor) -> torch.Tensor:
    """Self-attention where every pixel attends uniformly to the pixels of its own region."""
    flat = labels.flatten()
    same = (flat[:, None] == flat[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def test_kmeans_is_deterministic_and_separates_blobs():
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(20, 3, generator=gen) + 10, torch.randn(30, 3, generator=gen) - 10])
    a, b = kmeans(pts, 2, seed=3), kmeans(pts, 2, seed=3)
    assert torch.equal(a, b)
    assert len(set(a[:20].tolist())) == 1 and len(set(a[20:].tolist())) == 1 and a[0] != a[20]


def test_agreement_is_the_mean_attention_over_a_cluster():
    cross = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    clusters = torch.tensor([0, 0, 1, 2])
    assert agreement_scores(cross, clusters, 4).tolist() == [[0.75, 0.0, 0.0, 0.0]]


def test_mask_follows_the_planted_cross_attention():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[1:4, 1:4] = 1  # object A
    labels[5:8, 4:8] = 2  # object B
    labels[0, 6:] = 3  # small distractor
    self_attn = block_self_attention(labels)
    cross = torch.zeros(2, 8, 8)
    cross[0][labels == 1] = 1.0  # A's words attend to region 1
    cross[0][labels == 2] = 0.1  # with a little leakage onto B
    cross[1][labels == 2] = 0.8
    result = masks_from_attention(self_attn, cross, (8, 8), n_clusters=4, threshold=0.2)
    assert torch.equal(result.masks[0], labels == 1)
    assert torch.equal(result.masks[1], labels == 2)
    assert not (result.masks[0] & result.masks[1]).any()
    # nothing for an object whose attention is weak everywhere
    weak = masks_from_attention(self_attn, cross * 0.1, (8, 8), n_clusters=4, threshold=0.2)
    assert not weak.masks.any()


def test_provider_on_a_tiny_pipeline(pipe):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    provider = AttentionMasks(pipe, size=64, steps=2, threshold=0.0)
    masks = provider(image, ["cat", "dog"])
    assert set(masks) == {"cat", "dog"}
    assert all(m.shape == (48, 64) and m.dtype == torch.bool for m in masks.values())
    again = provider(image, ["cat", "dog"])
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert not (masks["cat"] & masks["dog"]).any()
    with pytest.raises(MaskError, match="could not find 'cat'.*best cluster agreement"):
        AttentionMasks(pipe, size=64, steps=2, threshold=1.01)(image, ["cat"])


def test_cli_with_the_attention_provider(tmp_path, capsys):
    import os

    from aledit.cli import main

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    common = ["--model", "tiny-random", "--size", "64", "--attention-threshold", "0", "--mask-cache", str(tmp_path / "c")]
    assert main(["masks", str(tmp_path / "img.png"), "--object", "cat", "--object", "dog", "--provider", "attention",
                 "--out", str(tmp_path / "m"), *common]) == 0
    assert sorted(os.listdir(tmp_path / "m")) == ["cat.png", "dog.png", "overlay.png"]
    cached = sorted(os.listdir(tmp_path / "c"))
    assert len(cached) == 2
    assert main(["edit", str(tmp_path / "img.png"), "--edit", "cat -> tiger", "--edit", "dog -> wolf", "--steps", "2",
                 "--mask-provider", "attention", "--out", str(tmp_path / "out.png"), *common]) == 0
    assert Image.open(tmp_path / "out.png").size == (56, 40)
    assert sorted(os.listdir(tmp_path / "c")) == cached  # found masks came from the cache


class _FullMapRecording(RecordingAttnProcessor):
    """The provider's recording before it was chunked: every layer's full probability map."""

    def attend(self, attn, query, key, value, attention_mask, is_cross):
        row = self.state.layout.index(self.branch, True)
        logits = torch.matmul(query[row], key[row].transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            logits = logits + attention_mask[row]
        self.recorder.add(logits.softmax(dim=-1), self.state.layer_hw(query.shape[2]))
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)


def test_chunked_recording_equals_the_full_maps(pipe, monkeypatch):
    """Recording a few query rows at a time (only the layers needed) gives the maps and masks the
    full per-layer probabilities gave."""
    import aledit.masks.attention as attention_masks

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    provider = AttentionMasks(pipe, size=64, steps=2, threshold=0.0)

    class Chunked(RecordingAttnProcessor):
        def __init__(self, state, recorder):
            super().__init__(state, recorder, chunk_bytes=4 * 8 * 64 * 7)  # a few rows per block

    monkeypatch.setattr(attention_masks, "RecordingAttnProcessor", Chunked)
    self_new, cross_new, hw = provider.record(image, ["cat", "dog"])
    masks_new = provider(image, ["cat", "dog"])
    monkeypatch.setattr(attention_masks, "RecordingAttnProcessor", _FullMapRecording)
    self_old, cross_old, hw_old = provider.record(image, ["cat", "dog"])
    masks_old = provider(image, ["cat", "dog"])
    assert hw == hw_old
    torch.testing.assert_close(self_new, self_old, rtol=0, atol=1e-6)  # float32 rounding of the blocked matmul
    torch.testing.assert_close(cross_new, cross_old, rtol=0, atol=1e-6)
    assert all(torch.equal(masks_new[k], masks_old[k]) for k in masks_old)


def test_recorders_skip_layers_they_do_not_need():
    from aledit.attention.recorder import AttentionRecorder, SelfAttentionRecorder

    self_rec = SelfAttentionRecorder((4, 4))
    assert self_rec.wants((4, 4), False) and not self_rec.wants((8, 8), False) and not self_rec.wants((4, 4), True)
    assert AttentionRecorder(((1, 2),), (4, 4)).wants((8, 8), True)
    assert not AttentionRecorder(((1, 2),), (4, 4)).wants((8, 8), False)
