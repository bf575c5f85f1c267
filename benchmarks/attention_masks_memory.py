"""Peak memory and time of the attention mask provider (``aledit masks --provider attention``).

Each size runs in a fresh process (peak RSS is per process) on ``tiny-random`` with the
command's defaults (15 steps, 5 clusters)::

    OMP_NUM_THREADS=1 python benchmarks/attention_masks_memory.py --sizes 256,512,768

prints a Markdown table: size, latent side, recorded self-attention layer side, peak RSS of the
process (``resource.getrusage``, includes Python, torch and the model) and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(size: int, model: str, steps: int) -> dict:
    import resource

    import numpy as np
    import torch
    from PIL import Image

    from aledit.masks import MaskError
    from aledit.masks.attention import AttentionMasks
    from aledit.pipeline import ALEEditPipeline

    torch.set_num_threads(1)
    pipe = ALEEditPipeline.from_pretrained(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    provider = AttentionMasks(pipe, size=size, steps=steps, threshold=0.0)
    start = time.perf_counter()
    try:
        provider(image, ["cat", "dog"])
    except MaskError:  # random weights may give an object no cluster; the memory is what is measured
        pass
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hw = provider._self_attention_hw()
    return {
        "size": size,
        "latent": size // pipe.vae_scale_factor,
        "self_attention_side": hw[0],
        "peak_rss_mib": peak / 1024,
        "model_loaded_rss_mib": before / 1024,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,768")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.model, args.steps)))
        return
    print("| size | latent | self-attention layer | peak RSS (MiB) | RSS after loading (MiB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--model", args.model, "--steps", str(args.steps)],
            capture_output=True, text=True,
        )
        if out.returncode:
            raise SystemExit(f"size {size} failed:\n{out.stderr}")
        out = out.stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {r['size']} | {r['latent']} | {r['self_attention_side']}x{r['self_attention_side']} "
            f"| {r['peak_rss_mib']:.0f} | {r['model_loaded_rss_mib']:.0f} | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
