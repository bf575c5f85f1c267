"""Paired comparison of two models on the synthetic benchmark: the same configurations run by
``aledit bench synthetic`` on the same edits (``--edits`` / ``--seed``) with two ``--model``
folders, compared edit by edit (mean [95% bootstrap CI] of each, and of the difference)::

    python scripts/synthetic_compare_models.py docs/synthetic_bench_records.jsonl RUN/records.jsonl \\
        --configs naive,ALE --first 20 --labels v1,candidate
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from aledit.reporting import mean_ci, paired_difference_ci

KEYS = ("success", "ti_leakage", "te_changed", "structure_kept", "color_kept", "material_kept")


def _load(path: str, first: int | None) -> dict[tuple[str, int], dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["config"], r["case"]): r for r in rows if first is None or r["case"] < first}


def compare(base: dict, cand: dict, configs: list[str], labels: tuple[str, str]) -> str:
    """Markdown table: one row per (config, score) over the cases both runs scored."""
    lines = [
        f"| config | metric | {labels[0]} | {labels[1]} | {labels[1]} − {labels[0]} (paired) |",
        "|---|---|---|---|---|",
    ]
    for config in configs:
        cases = sorted(c for (k, c) in base if k == config and (k, c) in cand)
        if not cases:
            raise ValueError(f"no edits of {config!r} in both record files")
        for key in KEYS:
            a = np.array([base[(config, c)][key] for c in cases], dtype=np.float64)
            b = np.array([cand[(config, c)][key] for c in cases], dtype=np.float64)
            both = np.isfinite(a) & np.isfinite(b)
            if not both.any():
                continue
            cells = [mean_ci(a[both]).format(), mean_ci(b[both]).format(), paired_difference_ci(b[both], a[both]).format()]
            lines.append(f"| {config} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="records.jsonl of the reference model")
    parser.add_argument("candidate", help="records.jsonl of the candidate model (same edits)")
    parser.add_argument("--configs", default="naive,ALE", help="comma-separated configurations")
    parser.add_argument("--first", type=int, default=None, metavar="N", help="only cases < N")
    parser.add_argument("--labels", default="base,candidate", help="two column labels")
    args = parser.parse_args(argv)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        parser.error("--labels takes two comma-separated names")
    try:
        table = compare(_load(args.base, args.first), _load(args.candidate, args.first), args.configs.split(","), labels)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
