"""Tables and chart of the synthetic benchmark from one or more ``records.jsonl`` files.

Runs of ``aledit bench synthetic`` with different ``--methods`` on the same ``--edits`` and
``--seed`` see the same edits, so their records can be merged into one paired comparison (e.g.
the fast methods in one process and P2P, slowed by null-text inversion, in another). The docs'
tables are rebuilt from their records with::

    python scripts/synthetic_tables.py docs/synthetic_bench_records.jsonl \\
        --order naive,ORE,ORE+RGB-CAM,ORE+BB,ALE --out docs/synthetic_bench
    python scripts/synthetic_tables.py docs/synthetic_methods_records.jsonl \\
        --order ale,p2p-ddim,masactrl,fpe,infedit,naive --out docs/synthetic_methods
    python scripts/synthetic_tables.py docs/synthetic_methods_records.jsonl \\
        --order ale,p2p,masactrl,fpe,infedit,naive --first 100 --out docs/synthetic_methods_p2p_nti
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
    parser.add_argument("--first", type=int, default=None, metavar="N", help="only the first N edits (cases < N)")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.png")
    args = parser.parse_args()

    records = []
    for path in args.records:
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    order = [c.strip() for c in args.order.split(",")] if args.order else None
    try:
        result = SyntheticBenchResult.from_records(records, order, args.first)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_text_atomic(result.markdown(), args.out + ".md")
    save_image_atomic(result.chart(), args.out + ".png")
    print(result.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
