"""How often does ``aledit demo`` succeed? Runs the demo (default edit type, naive and ALE) for
seeds ``0 .. N-1`` with a model and prints, per config, the mean of each demo score with its
95% bootstrap CI and the share of seeds with success >= 0.5; the last line is the same as JSON::

    python scripts/synthetic_demo_seeds.py [--model DIR] [--seeds 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
from tqdm.auto import tqdm

from aledit.reporting import mean_ci
from aledit.synthetic.demo import DEMO_KEYS, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the packaged synthetic-tiny)")
    parser.add_argument("--seeds", type=int, default=50, help="seeds 0 .. N-1 (default 50)")
    parser.add_argument("--edit-type", default="material", help="demo edit type (default: the demo's, material)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    from aledit.pipeline import ALEEditPipeline
    from aledit.synthetic.model import synthetic_model_path

    pipe = ALEEditPipeline.from_pretrained(args.model or synthetic_model_path())
    scores = {"naive": [], "ALE": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in tqdm(range(args.seeds), desc="demo seeds"):
            result = run_demo(os.path.join(tmp, "demo.png"), seed, args.edit_type, pipe=pipe)
            for name in scores:
                scores[name].append(result.scores[name].as_dict())
    summary = {}
    print(f"| config | {' | '.join(title for _, title in DEMO_KEYS)} | seeds with success >= 0.5 |")
    print("|---|" + "---|" * (len(DEMO_KEYS) + 1))
    for name, rows in scores.items():
        cells, entry = [], {}
        for key, _ in DEMO_KEYS:
            ci = mean_ci([r[key] for r in rows])
            cells.append(ci.format())
            entry[key] = ci.mean
        success = np.array([r["success"] for r in rows], dtype=float)
        entry["seeds_succeeding"] = float(np.mean(success >= 0.5))
        summary[name] = entry
        print(f"| {name} | {' | '.join(cells)} | {entry['seeds_succeeding']:.2f} |")
    print(json.dumps({"seeds": args.seeds, "edit_type": args.edit_type, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
