"""Speed and memory of one edit by any registered method against the floor of work it must do.

Model: SD-1.5-architecture UNet, VAE and CLIP text encoder with random weights (speed does not
depend on the weights), the real CLIP tokenizer, an LCM scheduler. Edit: 256x256, two objects
("cat -> tiger", "dog -> leopard"), the method's defaults except the step count (4 by default).

Floor, timed in the same process with diffusers' default attention processors: the UNet passes
the method really needs (its batch rows per sampling step: 3 for ALE / InfEdit with source
guidance 1, 4 for the SD methods with CFG on both branches; one row per DDIM inversion step; for
null-text inversion, one conditional pass per step plus every inner iteration's forward and
backward pass to the embedding; for DPL also every token iteration's conditional forward (with
gradient) and backward pass through the UNet and the text encoder to the noun tokens; all
counted from the run's own ``inversion_stats``; for latent guidance (BindEdit), one forward of
the step's whole batch with gradients to the latent plus one backward pass from the UNet's output
per guided iteration, counted from the run's ``guidance_stats``), one VAE encode, one VAE decode,
and one batched text encoding. BindEdit's and DPL's own backward passes start at their coarse
attention layers, not at the output, so their floors are generous.

Prints each method's wall time divided by its floor (goal <= 1.10) and the peak RSS.
Usage: ``python benchmarks/edit_speed.py [--method ale,p2p,masactrl,fpe,infedit,dpl,cpam,bindedit|all] [--repeats 3]
[--size 256] [--steps 4]``.
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


def _dynamic_prompt(pipe, text: str):
    """The source prompt with its first and last words as DPL's learnable tokens."""
    from aledit.ore import encode_prompts
    from aledit.prompts import layout_prompt
    from aledit.samplers.dpl_inversion import DynamicPrompt

    words = text.split()
    layout = layout_prompt(pipe.tokenizer, text, [words[0], words[-1]])
    embedding = encode_prompts(pipe.text_encoder, pipe.tokenizer, [text])[0]
    return DynamicPrompt(pipe.text_encoder, torch.tensor([layout.input_ids]), layout.spans, embedding)


@torch.no_grad()
def floor_run(pipe, image, size: int, steps: int, rows: int, inversion: dict, texts: list[str], guided: int = 0) -> float:
    """The unavoidable work of one edit, timed: ``texts`` encoded in one batch, VAE encode,
    ``rows`` x ``steps`` UNet rows, the inversion's passes (``inversion``: ``{"forward": n,
    "backward": m}``), ``guided`` latent-guidance iterations (``rows`` rows forward with
    gradients to the latent, and backward), VAE decode."""
    from aledit.ore import encode_prompts

    start = time.perf_counter()
    encode_prompts(pipe.text_encoder, pipe.tokenizer, texts)
    pixels = pipe.image_processor.preprocess(image, height=size, width=size)
    latent = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    embeds = torch.randn(rows, 77, 768)
    batch = latent.repeat(rows, 1, 1, 1)
    for t in range(steps):
        pipe.unet(batch, 999 - 250 * t, encoder_hidden_states=embeds)
    forward, backward = inversion.get("forward", 0), inversion.get("backward", 0)
    for k in range(forward - backward):  # passes without gradient (DDIM inversion, NTI's conditional pass)
        pipe.unet(latent, 999 - k % 1000, encoder_hidden_states=embeds[:1])
    for k in range(backward):  # NTI's / DPL's iterations: forward with gradient to the embedding, backward
        with torch.enable_grad():
            null = embeds[:1].clone().requires_grad_(True)
            out = pipe.unet(latent, 999 - k % 1000, encoder_hidden_states=null).sample
            torch.autograd.grad(out.square().mean(), [null])
    for k in range(guided):  # latent guidance: a whole-batch forward with gradient to the latent, backward
        with torch.enable_grad():
            x = batch.clone().requires_grad_(True)
            out = pipe.unet(x, 999 - 250 * k, encoder_hidden_states=embeds).sample
            torch.autograd.grad(out.square().mean(), [x])
    text_backward = inversion.get("text_backward", 0)
    if text_backward:  # DPL: the text encoder forward with gradient to the noun tokens, backward
        prompt = _dynamic_prompt(pipe, texts[1])
        for _ in range(text_backward):
            with torch.enable_grad():
                tokens = prompt.initial_tokens().requires_grad_(True)
                torch.autograd.grad(prompt.encode(tokens).square().mean(), [tokens])
    pipe.vae.decode(latent / pipe.vae.config.scaling_factor)
    return time.perf_counter() - start


def method_run(pipe, method: str, image, masks, edits, size: int, steps: int):
    from aledit.methods import method_info
    from aledit.methods.base import MASKS_UNUSED

    masks = None if method_info(method).masks == MASKS_UNUSED else masks
    start = time.perf_counter()
    out = pipe.edit(image, edits, masks, method=method, size=size, steps=steps, progress=False)
    return time.perf_counter() - start, out


def measure(pipe, method: str, size: int, steps: int, repeats: int) -> tuple[float, float, dict]:
    from aledit.methods import make_method

    image, masks, edits = inputs(size)
    rows = len(make_method(method).guidance.layout())
    texts = ["tiger and leopard", "cat and dog", ""]
    if method == "ale":  # ORE also encodes every object phrase alone
        texts += ["tiger", "leopard", "cat", "dog"]
    # warm-up: first calls allocate and pick kernels; its stats say what the inversion costs
    _, out = method_run(pipe, method, image, masks, edits, size, steps)
    stats = out.extras.get("inversion_stats", {})
    guided = out.extras.get("guidance_stats", {}).get("backward", 0)
    floor_run(pipe, image, size, 1, rows, {}, texts)
    runs, floors = [], []
    for _ in range(repeats):  # interleaved so drift hits both alike
        floors.append(floor_run(pipe, image, size, steps, rows, stats, texts, guided))
        runs.append(method_run(pipe, method, image, masks, edits, size, steps)[0])
    return min(runs), min(floors), {"rows": rows, **stats, "guided": guided, "runs": runs, "floors": floors}


def main() -> None:
    from aledit.methods import available_methods

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ale", help="registered methods, comma-separated, or 'all'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    methods = available_methods() if args.method == "all" else tuple(m.strip() for m in args.method.split(","))
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; available: {', '.join(available_methods())}")

    from aledit import EditPipeline

    pipe = EditPipeline(**sd15_components())
    print(f"threads {torch.get_num_threads()}; edit {args.size}x{args.size}, {args.steps} steps, 2 objects")
    print("| method | rows/step | inversion fwd / bwd (text bwd) | guidance fwd+bwd | floor s | method s | method / floor |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        run, floor, info = measure(pipe, method, args.size, args.steps, args.repeats)
        inv = f"{info.get('forward', 0)} / {info.get('backward', 0)}"
        if info.get("text_backward"):
            inv += f" ({info['text_backward']})"
        print(
            f"| {method} | {info['rows']} | {inv} | {info['guided']} | {floor:.2f} | {run:.2f} | {run / floor:.3f} |",
            flush=True,
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"goal: method / floor <= 1.10; peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
