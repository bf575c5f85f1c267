import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from aledit.attention import (
    AttentionRecorder,
    BatchLayout,
    EditState,
    MutualSelfAttentionProcessor,
    RegionGuidance,
    RegionGuidedCrossAttentionProcessor,
)

T, D, Q = 7, 8, 16  # tokens, text width, query width
HW = (4, 4)


def make_attn(cross=True):
    torch.manual_seed(0)
    return Attention(query_dim=Q, cross_attention_dim=D if cross else None, heads=2, dim_head=8).eval()


def state(steps=4):
    return EditState(BatchLayout.dual_branch(source_uncond=False, target_uncond=True), steps, HW)


def inputs(rows=3):
    torch.manual_seed(1)
    return torch.randn(rows, HW[0] * HW[1], Q), torch.randn(rows, T, D)


def manual_row(attn, hidden, keys_from, values_from):
    """Plain attention of one row with keys and values from different embeddings."""
    heads = attn.heads
    q = attn.to_q(hidden).view(-1, heads, 8).transpose(0, 1)
    k = attn.to_k(keys_from).view(-1, heads, 8).transpose(0, 1)
    v = attn.to_v(values_from).view(-1, heads, 8).transpose(0, 1)
    out = (torch.matmul(q, k.transpose(-1, -2)) * attn.scale).softmax(-1) @ v
    return attn.to_out[0](out.transpose(0, 1).reshape(-1, heads * 8))


def test_layer_resolution_rounds_up():
    s = EditState(BatchLayout.dual_branch(False, True), 4, (95, 64))
    assert s.layer_hw(95 * 64) == (95, 64)
    assert s.layer_hw(48 * 32) == (48, 32)
    assert s.layer_hw(24 * 16) == (24, 16)
    with pytest.raises(ValueError):
        s.layer_hw(7)


def test_layout_rows_and_partners():
    three = BatchLayout.dual_branch(source_uncond=False, target_uncond=True)
    assert [(r.branch, r.conditional) for r in three.rows] == [("source", True), ("target", False), ("target", True)]
    assert three.source_partner(1) == 0 and three.source_partner(2) == 0
    four = BatchLayout.dual_branch(source_uncond=True, target_uncond=True)
    assert four.source_partner(2) == 0 and four.source_partner(3) == 1


@torch.no_grad()
def test_rgb_cam_with_one_full_mask_is_plain_attention_with_the_objects_ore_values():
    attn = make_attn()
    hidden, context = inputs()
    values = torch.randn(2, T, D)  # e'_base, e'_O1
    guidance = RegionGuidance(torch.ones(1, 8, 8, dtype=torch.bool), ((1, 3),), values)
    attn.set_processor(RegionGuidedCrossAttentionProcessor(state(), guidance))
    out = attn(hidden, encoder_hidden_states=context)
    expected = manual_row(attn, hidden[2], context[2], values[1])
    assert torch.allclose(out[2], expected, atol=1e-5)
    # the other rows are untouched plain attention
    attn.set_processor(AttnProcessor2_0())
    plain = attn(hidden, encoder_hidden_states=context)
    assert torch.allclose(out[:2], plain[:2], atol=1e-5)


@torch.no_grad()
def test_rgb_cam_regions_are_independent():
    attn = make_attn()
    hidden, context = inputs()
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # object 1: left half
    masks[1, :, 3:] = True  # object 2: right column; column 2 is background
    spans = ((1, 3), (4, 6))
    values = torch.randn(3, T, D)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    right, back = torch.zeros_like(left), torch.zeros_like(left)
    right[:, 3:] = True
    back[:, 2] = True

    def run(vals, ctx):
        attn.set_processor(RegionGuidedCrossAttentionProcessor(state(), RegionGuidance(masks, spans, vals)))
        return attn(hidden, encoder_hidden_states=ctx)[2].view(4, 4, -1)

    ref = run(values, context)
    # object 2's ORE values changed: object 1's region and the background are bitwise unchanged
    v2 = values.clone()
    v2[2] += torch.randn(T, D)
    out = run(v2, context)
    assert torch.equal(out[left], ref[left]) and torch.equal(out[back], ref[back])
    assert not torch.allclose(out[right], ref[right])
    # object 1's values changed: object 2's region unchanged
    v1 = values.clone()
    v1[1] += torch.randn(T, D)
    out = run(v1, context)
    assert torch.equal(out[right], ref[right]) and not torch.allclose(out[left], ref[left])
    # object 2's *key* tokens changed: inside object 1 its tokens are masked (-100), so no effect
    ctx = context.clone()
    ctx[2, 4:6] += 5 * torch.randn(2, D)
    out = run(values, ctx)
    assert torch.allclose(out[left], ref[left], atol=1e-6)
    assert not torch.allclose(out[right], ref[right], atol=1e-3)


@torch.no_grad()
def test_rgb_cam_background_uses_base_values_and_masks_object_tokens():
    attn = make_attn()
    hidden, context = inputs()
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    values = torch.randn(2, T, D)
    recorder = AttentionRecorder(((1, 3),), (4, 4))
    attn.set_processor(RegionGuidedCrossAttentionProcessor(state(), RegionGuidance(masks, ((1, 3),), values), recorder))
    out = attn(hidden, encoder_hidden_states=context)[2].view(4, 4, -1)
    # background pixel: base values with the object's tokens masked out of the softmax
    heads = attn.heads
    q = attn.to_q(hidden[2]).view(-1, heads, 8).transpose(0, 1)
    k = attn.to_k(context[2]).view(-1, heads, 8).transpose(0, 1)
    v = attn.to_v(values[0]).view(-1, heads, 8).transpose(0, 1)
    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    logits[:, 8:, 1:3] -= 100.0  # rows 2-3 of the 4x4 grid are outside the mask
    expected = attn.to_out[0]((logits.softmax(-1) @ v).transpose(0, 1).reshape(16, -1)).view(4, 4, -1)
    assert torch.allclose(out[2:], expected[2:], atol=1e-5)
    # the recorded map of the object is (almost) zero outside its mask
    maps = recorder.maps()
    assert maps.shape == (1, 4, 4) and maps[0, 2:].max() < 1e-6 and maps[0, :2].max() == 1.0


@torch.no_grad()
def test_mutual_self_attention_borrows_source_queries_and_keys_while_active():
    attn = make_attn(cross=False)
    hidden, _ = inputs()
    s = state(steps=4)
    attn.set_processor(MutualSelfAttentionProcessor(s, self_replace=0.5))
    q = attn.to_q(hidden).view(3, -1, 2, 8).transpose(1, 2)
    k = attn.to_k(hidden).view(3, -1, 2, 8).transpose(1, 2)
    v = attn.to_v(hidden).view(3, -1, 2, 8).transpose(1, 2)

    def expected(qrow, krow, vrow):
        o = F.scaled_dot_product_attention(q[qrow], k[krow], v[vrow])
        return attn.to_out[0](o.transpose(0, 1).reshape(16, -1))

    s.step = 0  # (0 + 1) / 4 < 0.5: borrowing
    out = attn(hidden)
    assert torch.allclose(out[0], expected(0, 0, 0), atol=1e-5)
    for row in (1, 2):  # both target rows take the source's conditional row (no source uncond row)
        assert torch.allclose(out[row], expected(0, 0, row), atol=1e-5)
    s.step = 1  # (1 + 1) / 4 = 0.5: no longer
    out = attn(hidden)
    for row in (0, 1, 2):
        assert torch.allclose(out[row], expected(row, row, row), atol=1e-5)


def test_mutual_self_attention_rejects_unknown_projection():
    with pytest.raises(ValueError):
        MutualSelfAttentionProcessor(state(), 0.5, borrow=("queries",))
