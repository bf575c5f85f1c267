#!/usr/bin/env python
"""Where does a model's cross-attention go on synthetic scenes?

For 2-object scenes noised to t = 800, 500 and 200 and their own captions, prints the mean
cross-attention mass on BOS, on the caption's words and on EOS + padding, and how strongly each
object's words attend inside that object's mask (and inside the other object's mask) relative
to a uniform map (1.0 = no localisation). Used in the synthetic benchmark's analysis (README).

    python scripts/synthetic_attention_probe.py [MODEL_DIR] [--scenes 24]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from aledit import ALEEditPipeline
from aledit.ore import encode_prompts
from aledit.synthetic import random_scene


class CrossAttentionProbe(AttnProcessor):
    """The default processor, also keeping each cross-attention's head-mean probabilities."""

    def __init__(self):
        super().__init__()
        self.maps: list[torch.Tensor] = []  # each [B, HW, T]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(q, k, None)
            self.maps.append(probs.reshape(hidden_states.shape[0], attn.heads, *probs.shape[1:]).mean(1))
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _area(mask: np.ndarray, hw: int) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(hw, hw), mode="area").flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="synthetic-tiny")
    parser.add_argument("--scenes", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = ALEEditPipeline.from_pretrained(args.model)
    probe = CrossAttentionProbe()
    pipe.unet.set_attn_processor(probe)
    tok = pipe.tokenizer
    mass = {"BOS": [], "words": [], "EOS+padding": []}
    own, other = [], []
    rng = np.random.default_rng(1)
    for n in range(args.scenes):
        scene = random_scene(rng, 2)
        ids = tok(scene.caption, padding="max_length", max_length=tok.model_max_length).input_ids
        length = ids.index(tok.eos_token_id)  # BOS + words
        spans, pos = [], 1
        for phrase in scene.caption.split(" and "):
            count = len(tok(phrase).input_ids) - 2
            spans.append((pos, pos + count))
            pos += count + 1  # the "and"
        pixels = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            latent = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            emb = encode_prompts(pipe.text_encoder, tok, [scene.caption])
            for t in (800, 500, 200):
                tt = torch.tensor([t])
                noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(n))
                probe.maps.clear()
                pipe.unet(pipe.scheduler.add_noise(latent, noise, tt), tt, encoder_hidden_states=emb)
                for p in probe.maps:
                    p = p[0]  # [HW, T]
                    mass["BOS"].append(p[:, 0].mean().item())
                    mass["words"].append(p[:, 1:length].sum(-1).mean().item())
                    mass["EOS+padding"].append(p[:, length:].sum(-1).mean().item())
                    hw = int(p.shape[0] ** 0.5)
                    for i, (a, b) in enumerate(spans):
                        w = p[:, a:b].sum(-1)
                        w = w / w.sum()
                        for j, out in ((i, own), (1 - i, other)):
                            m = _area(scene.masks[j], hw)
                            if m.mean() > 0:
                                out.append(((w * m).sum() / m.mean()).item())
    print("cross-attention mass:", {k: round(float(np.mean(v)), 3) for k, v in mass.items()})
    print(f"object words inside own mask / uniform: {np.mean(own):.2f}; inside the other object's mask: {np.mean(other):.2f}")


if __name__ == "__main__":
    main()
