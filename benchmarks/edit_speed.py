"""Speed and memory of one ALE edit against the floor of work any implementation must do.

Model: SD-1.5-architecture UNet, VAE and CLIP text encoder with random weights (speed does not
depend on the weights), the real CLIP tokenizer, an LCM scheduler. Edit: 256x256, 4 steps, two
objects ("cat -> tiger", "dog -> leopard"), all ALE parts on.

Floor, timed in the same process: the UNet passes that are really needed (source guidance 1 ->
no unconditional source row: batch 3 per step), one VAE encode, one VAE decode, and the text
encodings (one batched call of the same prompts), with diffusers' default attention processors.

Prints the ALE edit's wall time divided by the floor (goal <= 1.10) and the peak RSS.
Usage: ``python benchmarks/edit_speed.py [--repeats 3] [--size 256] [--steps 4]``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from PIL import Image


def sd15_components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from aledit.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # the defaults are SD-1.5's architecture
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    ).eval()
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler)


def inputs(size: int):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    cat = np.zeros((size, size), bool)
    cat[size // 8 : size // 2, size // 8 : size // 2] = True
    dog = np.zeros((size, size), bool)
    dog[size // 2 :, size // 2 :] = True
    return image, {"cat": cat, "dog": dog}, ["cat -> tiger", "dog -> leopard"]


@torch.no_grad()
def floor_run(pipe, image, size: int, steps: int) -> float:
    from aledit.ore import encode_prompts

    start = time.perf_counter()
    encode_prompts(pipe.text_encoder, pipe.tokenizer, ["tiger and leopard", "cat and dog", "", "tiger", "leopard", "cat", "dog"])
    pixels = pipe.image_processor.preprocess(image, height=size, width=size)
    latent = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    embeds = torch.randn(3, 77, 768)
    batch = latent.repeat(3, 1, 1, 1)
    for t in range(steps):
        pipe.unet(batch, 999 - 250 * t, encoder_hidden_states=embeds)
    pipe.vae.decode(latent / pipe.vae.config.scaling_factor)
    return time.perf_counter() - start


def ale_run(pipe, image, masks, edits, size: int, steps: int) -> float:
    start = time.perf_counter()
    pipe.edit(image, edits, masks, size=size, steps=steps, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from aledit import ALEEditPipeline

    pipe = ALEEditPipeline(**sd15_components())
    image, masks, edits = inputs(args.size)
    # warm-up: first calls allocate and pick kernels
    ale_run(pipe, image, masks, edits, args.size, 1)
    floor_run(pipe, image, args.size, 1)
    ale, floor = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        floor.append(floor_run(pipe, image, args.size, args.steps))
        ale.append(ale_run(pipe, image, masks, edits, args.size, args.steps))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"threads            {torch.get_num_threads()}")
    print(f"edit               {args.size}x{args.size}, {args.steps} steps, 2 objects, ALE (ORE + RGB-CAM + BB)")
    print(f"floor  (min of {args.repeats})  {min(floor):7.2f} s   runs: {', '.join(f'{t:.2f}' for t in floor)}")
    print(f"ALE    (min of {args.repeats})  {min(ale):7.2f} s   runs: {', '.join(f'{t:.2f}' for t in ale)}")
    print(f"ALE / floor        {min(ale) / min(floor):7.3f}   (goal <= 1.10)")
    print(f"peak RSS           {peak_mib:7.0f} MiB")


if __name__ == "__main__":
    main()
