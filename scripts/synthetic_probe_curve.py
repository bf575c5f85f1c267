#!/usr/bin/env python
"""Probe figures against training time: runs :func:`aledit.synthetic.probe.run_probe` on every
checkpoint of training runs (``RUN/checkpoints/step-N`` from ``train_synthetic.py
--checkpoint-every``) and on each run's final model, and prints a Markdown table (and, with
``--csv``, writes the same frame as CSV).

    python scripts/synthetic_probe_curve.py RUN_DIR [RUN_DIR ...] [--scenes 16] [--csv curve.csv]
"""

import argparse
import json
import logging
import os
import re
import sys

import pandas as pd
import torch

from aledit.reporting import to_markdown
from aledit.synthetic.model import is_saved_pipeline
from aledit.synthetic.probe import PROBE_KEYS, ProbeConfig, run_probe
from aledit.validation import check_number

logger = logging.getLogger("synthetic_probe_curve")


def _models(run: str) -> list[tuple[str, int | None, str]]:
    found = []
    folder = os.path.join(run, "checkpoints")
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = re.fullmatch(r"step-(\d+)", name)
            if m:
                found.append((os.path.basename(os.path.normpath(run)), int(m.group(1)), os.path.join(folder, name)))
    if is_saved_pipeline(run):
        found.append((os.path.basename(os.path.normpath(run)), None, run))
    return sorted(found, key=lambda r: (r[1] is None, r[1] or 0))


def _seconds(path: str) -> float | None:
    for name, key in (("checkpoint.json", None), ("training.json", "total")):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            with open(p) as f:
                record = json.load(f)
            return record["seconds"] if key is None else record["seconds"][key]
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="training output folders")
    parser.add_argument("--scenes", type=int, default=ProbeConfig.scenes)
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        check_number("threads", args.threads, 1, integer=True)
        config = ProbeConfig(scenes=args.scenes)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from aledit import ALEEditPipeline

    torch.set_num_threads(args.threads)
    found = [_models(run) for run in args.runs]  # every run checked before any model loads
    for run, models in zip(args.runs, found):
        if not models:
            parser.error(f"{run} has neither a model nor checkpoints")
    rows = []
    for models in found:
        for name, step, path in models:
            pipe = ALEEditPipeline.from_pretrained(path)
            pipe.set_progress_bar_config(disable=True)
            result = run_probe(pipe, config, progress=not args.no_progress)
            if step is None:
                with open(os.path.join(path, "training.json")) as f:
                    step = json.load(f)["config"]["steps"]
            row = {"run": name, "step": step, "seconds": _seconds(path), **{k: round(result[k], 3) for k in PROBE_KEYS}}
            row.update({f"control_t{t}": v for t, v in result["caption_control"].items()})
            row.update({f"shape_t{t}": round(v, 3) for t, v in result["shape_control"].items()})
            logger.info("%s", row)
            rows.append(row)
    frame = pd.DataFrame(rows)
    print(to_markdown(frame))  # ours: pandas' needs tabulate, not a dependency
    if args.csv:
        frame.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
