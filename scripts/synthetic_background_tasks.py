"""Background alteration and object removal on the synthetic world, scored from exact masks.

The synthetic world's captions never name the background, so ``synthetic-tiny`` cannot be asked
for a new background colour; what *is* exact is which pixels must stay. For the first edited
object of each ``bench_cases`` case (its exact visible mask ``O``):

* background alteration: the prompt is the case's target phrase (e.g. ``"blue-colored star"``),
  to be drawn *outside* the object. Scores: ``object_kept`` = fraction of ``O`` whose palette
  class (colour, shade, background) is the source's; ``rest_changed`` = fraction of the other
  pixels whose class changed (did anything get altered); ``floor`` = ``object_kept`` of a plain
  VAE round trip. Configurations: ``cpam`` (``task=background``), ``cpam-unpreserved`` (the same
  run with preservation adaptation and localized extraction off: a plain DDIM edit with that
  prompt), ``masactrl`` (mask-guided with ``O``, same prompt), ``ale`` (``O``'s complement as the
  edited region, the prompt as its target: ALE's background blend then keeps ``O`` in latent
  space).
* removal: ``cpam`` ``task=remove`` with the target phrase ``"background"`` against
  ``cpam-unpreserved``; ``removed`` = fraction of ``O`` showing the scene's background colour,
  ``rest_kept`` = fraction of the pixels outside ``O`` dilated by CPAM's kernel keeping their class.

Usage: ``python scripts/synthetic_background_tasks.py --cases 25 --out runs/cpam_tasks``
(writes ``records.jsonl`` and ``tables.md``; mean [95% percentile-bootstrap CI]).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from aledit.io import save_text_atomic
from aledit.masks.refine import area_kernel, dilate_square
from aledit.synthetic.bench import bench_cases, markdown_table, mean_ci, paired_difference_ci
from aledit.synthetic.metrics import classify_pixels
from aledit.synthetic.model import SYNTHETIC_EDIT_SETTINGS, synthetic_model_path

logger = logging.getLogger(__name__)

OFF = {"background_start_step": 10_000, "localized_extraction": False}


def classes(image: np.ndarray, background: str) -> np.ndarray:
    """``[3, H, W]``: colour index, shade flag, background flag of every pixel."""
    c = classify_pixels(image, background)
    return np.stack([c.color, c.shade, c.background])


def run_case(pipe, case, settings) -> list[dict]:
    obj_edit = case.edit.objects[0]
    source, target = obj_edit.source_phrase, obj_edit.target_phrase
    obj = np.array(case.scene.masks[obj_edit.index], dtype=bool)
    background = case.scene.spec.background
    image = Image.fromarray(case.scene.image)
    src = classes(case.scene.image, background)
    size, steps, guidance = settings.size, settings.steps, settings.target_guidance
    roundtrip = np.asarray(pipe._decode(pipe._encode_image(image, size, size)).convert("RGB"))
    floor = float((classes(roundtrip, background) == src).all(0)[obj].mean())
    grown = dilate_square(torch.from_numpy(obj), area_kernel(torch.from_numpy(obj), 0.1)).numpy()

    def edit(edit_text, masks, method, options):
        out = pipe.edit(image, [edit_text], masks, method=method, options=options, seed=case.index,
                        steps=steps, size=size, progress=False)
        return classes(np.asarray(out.image.convert("RGB")), background)

    records = []
    base = {"case": case.index, "object": source, "prompt": target, "floor": floor}
    alteration = {
        "cpam": (f"{source} -> {target}", {source: obj}, "cpam", {"task": "background", "guidance": guidance}),
        "cpam-unpreserved": (f"{source} -> {target}", {source: obj}, "cpam",
                             {"task": "background", "guidance": guidance, **OFF}),
        "masactrl": (f"{source} -> {target}", {source: obj}, "masactrl", {"mask_guided": True, "guidance": guidance}),
        "ale": (f"background -> {target}", {"background": ~obj}, "ale", settings.options("ale")),
    }
    for config, (text, masks, method, options) in alteration.items():
        same = (edit(text, masks, method, options) == src).all(0)
        records.append({**base, "task": "background", "config": config, "object_kept": float(same[obj].mean()),
                        "rest_changed": float(1.0 - same[~obj].mean())})
    removal = {
        "cpam": {"task": "remove", "guidance": guidance},
        "cpam-unpreserved": {"task": "remove", "guidance": guidance, **OFF},
    }
    for config, options in removal.items():
        out = edit(f"{source} -> background", {source: obj}, "cpam", options)
        same = (out == src).all(0)
        records.append({**base, "task": "remove", "config": config, "removed": float(out[2][obj].mean()),
                        "rest_kept": float(same[~grown].mean())})
    return records


def tables(records: list[dict]) -> str:
    lines = [f"{len({r['case'] for r in records})} synthetic cases (first edited object of `bench_cases`, seed 0); "
             "mean [95% percentile-bootstrap CI].", ""]
    for task, keys in (("background", ("object_kept", "rest_changed", "floor")), ("remove", ("removed", "rest_kept"))):
        rows = [r for r in records if r["task"] == task]
        configs = list(dict.fromkeys(r["config"] for r in rows))
        lines += [f"## {task}", "", markdown_table(["config", *keys], [
            [c, *[mean_ci([r[k] for r in rows if r["config"] == c]).format() for k in keys]] for c in configs
        ]), ""]
        ref = "cpam"
        diffs = []
        for c in configs:
            if c == ref:
                continue
            a = [r for r in rows if r["config"] == ref]
            b = [r for r in rows if r["config"] == c]
            diffs.append([f"cpam − {c}", *[paired_difference_ci([x[k] for x in a], [y[k] for y in b]).format()
                                            for k in keys if k != "floor"]])
        lines += [markdown_table(["pair", *[f"Δ {k}" for k in keys if k != "floor"]], diffs), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=25)
    parser.add_argument("--out", required=True, metavar="DIR")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from aledit.pipeline import EditPipeline

    pipe = EditPipeline.from_pretrained(synthetic_model_path())
    pipe.set_progress_bar_config(disable=True)
    records = []
    for case in tqdm(bench_cases(args.cases, seed=0), desc="cases"):
        records += run_case(pipe, case, SYNTHETIC_EDIT_SETTINGS)
        save_text_atomic("".join(json.dumps(r) + "\n" for r in records), os.path.join(args.out, "records.jsonl"))
    text = tables(records)
    save_text_atomic(text, os.path.join(args.out, "tables.md"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
