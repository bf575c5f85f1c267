"""Tables and chart of the synthetic benchmark from one or more ``records.jsonl`` files.

Runs of ``aledit bench synthetic`` with different ``--methods`` on the same ``--edits`` and
``--seed`` see the same edits, so their records can be merged into one paired comparison (e.g.
the fast methods in one process and P2P, slowed by null-text inversion, in another)::

    python scripts/synthetic_tables.py runs/fast/records.jsonl runs/p2p/records.jsonl \\
        --order ale,p2p,masactrl,fpe,infedit,naive --out docs/synthetic_methods
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from aledit.io import save_image_atomic, save_text_atomic
from aledit.synthetic.bench import SyntheticBenchResult


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", help="records.jsonl files of runs on the same edits")
    parser.add_argument("--order", default=None, help="comma-separated configurations, in table order")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.png")
    args = parser.parse_args()

    records = []
    for path in args.records:
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    found = list(dict.fromkeys(r["config"] for r in records))
    order = [c.strip() for c in args.order.split(",")] if args.order else found
    missing = [c for c in order if c not in found]
    if missing:
        print(f"error: no records of {', '.join(missing)} (found: {', '.join(found)})", file=sys.stderr)
        return 2
    cases = {c: sorted(r["case"] for r in records if r["config"] == c) for c in order}
    if len({tuple(v) for v in cases.values()}) != 1:
        print("error: the runs did not see the same edits (different --edits or --seed)", file=sys.stderr)
        return 2
    result = SyntheticBenchResult(tuple(r for r in records if r["config"] in order), tuple(order))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_text_atomic(result.markdown(), args.out + ".md")
    save_image_atomic(result.chart(), args.out + ".png")
    print(result.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
