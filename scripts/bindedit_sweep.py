"""BindEdit's default-setting sweep and its measurements on the synthetic world (docs/bindedit.md).

Runs named configurations (BindEdit option sets, or other registered methods / bench variants)
on the 2- and 3-object edits among the first ``--edits`` edits of :func:`aledit.synthetic.bench.
bench_cases` (the same edits and noise for every configuration, so differences are paired), and
writes ``records.jsonl`` and ``tables.md`` (means with 95% bootstrap CIs)::

    python scripts/bindedit_sweep.py --plan sweep --edits 15 --out runs/bindedit-sweep
    python scripts/bindedit_sweep.py --plan final --edits 45 --shard 0/2 --out runs/final-0   # and 1/2
    python scripts/bindedit_sweep.py --plan final --edits 45 --merge runs/final-*/records.jsonl \\
        --first-case 15 --out runs/final
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from aledit.io import save_text_atomic
from aledit.pipeline import EditPipeline
from aledit.synthetic.bench import EDIT_TYPES, SyntheticBenchResult, bench_cases, markdown_table, resolve_config
from aledit.synthetic.metrics import score_edit
from aledit.synthetic.model import SYNTHETIC_EDIT_SETTINGS

OFF = {"binding": False, "rebalance": False, "fidelity": False}
# name -> (method, options); bench names (methods, variants) resolve through the bench.
PLANS = {
    "sweep": {
        "off": ("bindedit", OFF),
        "rebal-s2": ("bindedit", {**OFF, "rebalance": True, "rebalance_scale": 2.0}),
        "rebal-s4": ("bindedit", {**OFF, "rebalance": True, "rebalance_scale": 4.0}),
        "bind-0.1": ("bindedit", {**OFF, "binding": True, "step_size": 0.1, "guidance_steps": 0.25}),
        "bind-0.3": ("bindedit", {**OFF, "binding": True, "step_size": 0.3, "guidance_steps": 0.25}),
        "bind-0.3-cross": ("bindedit", {**OFF, "binding": True, "step_size": 0.3, "guidance_steps": 0.25,
                                        "self_binding_weight": 0.0}),
        "fid-1-0.3": ("bindedit", {**OFF, "fidelity": True, "fidelity_weight": 1.0, "step_size": 0.3,
                                   "guidance_steps": 0.25}),
    },
    "final": {
        name: resolve_config(name)
        for name in (
            "bindedit", "bindedit-all", "bindedit-no-binding", "bindedit-no-rebalance", "bindedit-no-fidelity",
            "bindedit-off", "bindedit-bb", "ale", "infedit",
        )
    },
}


def tables(records: list[dict], names: list[str], title: str) -> str:
    """Markdown: every configuration's mean [95% CI] (all edits, by object count), paired
    differences to the all-off configuration, success and TI leakage by edit type."""
    result = SyntheticBenchResult(tuple(records), tuple(names), SYNTHETIC_EDIT_SETTINGS)
    keys = (
        ("success", "success", True),
        ("ti_leakage", "TI leakage", False),
        ("te_changed", "TE changed", False),
        ("structure_kept", "structure kept", True),
    )
    by_type = []
    for key in ("success", "ti_leakage"):
        rows = []
        for edit_type in EDIT_TYPES:
            where = lambda r, t=edit_type.value: r["edit_type"] == t
            if any(where(r) for r in records):
                rows.append([edit_type.value, *(result.summary(c, key, where).format(2) for c in names)])
        by_type += [f"### {key} by edit type", "", markdown_table(["edit type", *names], rows), ""]
    reference = "off" if "off" in names else ("bindedit-off" if "bindedit-off" in names else names[0])
    return "\n".join([
        f"# {title}", "",
        result.ablation_table(keys), "",
        result.difference_table(reference, keys), "",
        result.object_count_table(keys), "",
        *by_type,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), required=True)
    parser.add_argument("--edits", type=int, default=24, help="first N bench edits; the 2- and 3-object ones run")
    parser.add_argument("--only", default=None, help="comma-separated subset of the plan's configurations")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th of the cases, starting at the I-th")
    parser.add_argument("--merge", nargs="+", default=None, help="records.jsonl files to merge instead of running")
    parser.add_argument("--first-case", type=int, default=0, help="with --merge: keep cases with index >= this "
                        "(15 leaves out the sweep's edits)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan = PLANS[args.plan]
    if args.only:
        plan = {k: plan[k] for k in args.only.split(",")}
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        records = []
        for path in args.merge:
            with open(path, encoding="utf-8") as f:
                records += [json.loads(line) for line in f if line.strip()]
        records = [r for r in records if r["case"] >= args.first_case]
        complete = {c for c in {r["case"] for r in records} if {r["config"] for r in records if r["case"] == c} >= set(plan)}
        records = [r for r in records if r["case"] in complete and r["config"] in plan]
        n = len({r["case"] for r in records})
        md = tables(records, list(plan), f"BindEdit {args.plan}: {n} edits of 2-3 objects (first {args.edits} bench edits)")
        save_text_atomic(md, os.path.join(args.out, "tables.md"))
        print(md)
        return 0
    shard, n_shards = (int(v) for v in args.shard.split("/"))
    settings = SYNTHETIC_EDIT_SETTINGS
    pipe = EditPipeline.from_pretrained("synthetic-tiny")
    pipe.set_progress_bar_config(disable=True)
    cases = [c for c in bench_cases(args.edits, size=settings.size) if c.n_edit >= 2][shard::n_shards]
    records = []
    seconds = {name: 0.0 for name in plan}
    for case in tqdm(cases, desc=args.plan):
        for name, (method, options) in plan.items():
            t = time.perf_counter()
            out = pipe.edit(
                Image.fromarray(case.scene.image), case.edit.edits, case.masks, method=method,
                options=settings.options(method, **options), seed=case.index, steps=settings.steps,
                size=settings.size, progress=False,
            )
            seconds[name] += time.perf_counter() - t
            scores = score_edit(case.scene, case.edit, np.asarray(out.image.convert("RGB")), ideal=case.ideal)
            records.append({"case": case.index, "config": name, "edit_type": case.edit_type.value,
                            "n_edit": case.n_edit, **scores.as_dict()})
        save_text_atomic("".join(json.dumps(r) + "\n" for r in records), os.path.join(args.out, "records.jsonl"))
    md = tables(records, list(plan), f"BindEdit {args.plan}: {len(cases)} edits of 2-3 objects (first {args.edits} bench edits)")
    md += "\nSeconds per edit (wall, shared machine): " + ", ".join(f"{k} {v / len(cases):.2f}" for k, v in seconds.items()) + "\n"
    save_text_atomic(md, os.path.join(args.out, "tables.md"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
