"""Reports from pandas frames: scipy bootstrap intervals, Markdown/CSV tables, matplotlib charts,
the docs' synthetic tables regenerated from their stored records, and the rule for infinite
background PSNR (all on CPU, no model)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aledit.bench.report import results_frame, summary_frame, write_report
from aledit.bench.store import ResultRow, ResultStore, store_path
from aledit.reporting import Metric, grouped_bar_chart, mean_ci, summarize, to_markdown
from aledit.synthetic.bench import SyntheticBenchResult

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _hand_bootstrap(values, confidence=0.95, n_resamples=2000, seed=0):
    """The interval aledit computed by hand before scipy: percentile bootstrap, one draw of
    ``n_resamples x n`` indices from ``default_rng(seed)``, linear quantiles."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return min(low, x.mean()), max(high, x.mean())


@pytest.mark.parametrize("n", [2, 3, 17, 130, 200])
def test_scipy_bootstrap_draws_the_same_interval_as_before(n):
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.random(n) ** 3, [np.nan, np.inf]])  # skewed; NaN and inf left out
    ci = mean_ci(values)
    low, high = _hand_bootstrap(values)
    assert ci.n == n and ci.mean == pytest.approx(np.mean(values[:n]), abs=0)
    assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12  # same draws; quantile rounding only
    assert ci.format() == f"{ci.mean:.3f} [{low:.3f}, {high:.3f}]"


def test_summarize_groups_in_category_order_and_counts_infinite_values():
    frame = pd.DataFrame(
        {
            "method": pd.Categorical(["b", "a", "b", "a", "b"], categories=["b", "a"]),
            "psnr": [20.0, math.inf, 30.0, 10.0, math.inf],
            "ti": [math.nan, 0.5, math.nan, 0.25, math.nan],
        }
    )
    s = summarize(frame, ["method"], ["psnr", "ti"])
    assert list(s["method"]) == ["b", "a"] and list(s["size"]) == [3, 2]
    assert list(s["psnr"]) == [25.0, 10.0] and list(s["psnr_n"]) == [2, 1] and list(s["psnr_inf"]) == [1, 1]
    assert math.isnan(s["ti"][0]) and s["ti_n"][0] == 0 and s["ti"][1] == 0.375
    assert (s["psnr_low"][1], s["psnr_high"][1]) == (10.0, 10.0)  # one finite value
    assert to_markdown(s[["method", "size"]], right=["size"]) == "| method | size |\n|---|---:|\n| b | 3 |\n| a | 2 |"


def test_grouped_bar_chart_renders_with_missing_values():
    frame = pd.DataFrame(
        {"group": ["1 obj", "1 obj", "2 obj", "2 obj"], "m": ["x", "y"] * 2, "v": [0.1, 0.2, math.nan, 0.4]}
    )
    summary = summarize(frame, ["group", "m"], ["v"])
    image = grouped_bar_chart(summary, [Metric("v", "value", False)], group="group", series="m")
    assert image.mode == "RGB" and image.width > 600 and image.height > 250
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 10  # bars, text, error bars drawn


def _doc_tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.parametrize(
    "doc, records, order, first",
    [
        ("synthetic_methods.md", "synthetic_methods_records.jsonl", "ale,p2p-ddim,masactrl,fpe,infedit,naive", None),
        ("synthetic_methods_p2p_nti.md", "synthetic_methods_records.jsonl", "ale,p2p,masactrl,fpe,infedit,naive", 100),
        ("synthetic_bench.md", "synthetic_bench_records.jsonl", "naive,ORE,ORE+RGB-CAM,ORE+BB,ALE", None),
    ],
)
def test_docs_tables_regenerate_from_their_records(doc, records, order, first):
    """Every number (means, CIs, paired differences, counts) of the committed synthetic tables is
    what the current code computes from the committed per-edit records."""
    path = DOCS / records
    if not path.is_file():
        pytest.skip(f"{records} not in docs/")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    result = SyntheticBenchResult.from_records(lines, order.split(","), first)
    assert _doc_tables(result.markdown()) == _doc_tables((DOCS / doc).read_text())


def test_from_records_refuses_unpaired_runs():
    records = [
        {"case": c, "config": k, "edit_type": "color", "n_edit": 1, "success": 0.0} for c in range(3) for k in "ab"
    ]
    with pytest.raises(ValueError, match="no records of c"):
        SyntheticBenchResult.from_records(records, ["a", "c"])
    with pytest.raises(ValueError, match="did not score the same edits"):
        SyntheticBenchResult.from_records(records[:-1], ["a", "b"])
    assert SyntheticBenchResult.from_records(records[:-1], ["a", "b"], first=2).n_cases == 2


# ------------------------------------------------------------------ infinite background PSNR


def _row(edit_id, method, objects, psnr, ti=math.nan, status="ok", output="e.png"):
    return ResultRow(
        edit_id=edit_id, method=method, config_id="c", config={}, image="img", edit_type="color",
        num_objects=objects, pairs=tuple(("a", "b") for _ in range(objects)), seed=0, status=status,
        output=output if status == "ok" else None, error=None if status == "ok" else "boom",
        metrics={"bg_psnr": psnr, "ti_leakage": ti, "bg_mse": 0.0 if math.isinf(psnr) else 10 ** (-psnr / 10)},
    )


def test_untouched_background_is_counted_not_averaged(tmp_path):
    """Rule: a mean is over finite values; an infinite PSNR (untouched background) is left out of
    it and counted in ``PSNR ∞`` / ``bg_psnr_inf`` (the ALE authors' pandas mean would be inf)."""
    run = tmp_path / "run"
    (run / "out").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(run / "out" / "e.png")
    rows = [
        _row("e1", "ale", 1, 20.0, output="out/e.png"),
        _row("e2", "ale", 1, math.inf, output="out/e.png"),
        _row("e3", "ale", 2, 30.0, ti=0.5, output="out/e.png"),
        _row("e4", "naive", 1, math.inf, output="out/e.png"),
        _row("e5", "naive", 2, 0.0, status="error"),
    ]
    with ResultStore(store_path(run, 0)) as store:
        for row in rows:
            store.add(row)
    frame = results_frame(rows)
    t1 = summary_frame(frame, ["method"]).set_index("method")
    assert t1.loc["ale", "bg_psnr"] == 25.0 and t1.loc["ale", "bg_psnr_inf"] == 1 and t1.loc["ale", "bg_psnr_n"] == 2
    assert math.isnan(t1.loc["naive", "bg_psnr"]) and t1.loc["naive", "bg_psnr_inf"] == 1
    assert (t1.loc["naive", "n"], t1.loc["naive", "failed"]) == (1, 1)  # the failed edit counts nowhere else
    # the authors' pandas mean over the same successful edits
    assert frame[frame.status == "ok"].groupby("method", observed=True)["bg_psnr"].mean()["ale"] == math.inf

    files = write_report([run], tmp_path / "report")
    md = files.markdown.read_text()
    assert "| PSNR ↑ | LPIPS ↓ | MSE ↓ | SSIM ↑ | PSNR ∞ | N | failed |" in md
    assert "| ale | n/a | 0.50 [0.50, 0.50] | n/a | n/a | 25.00 [20.00, 30.00] |" in md  # Table 1 with CIs
    assert "| naive | n/a | n/a | n/a | n/a | n/a | n/a | 0.00000 [0.00000, 0.00000] | n/a | 1 | 1 | 1 |" in md
    assert "(2 in all;" in md
    with open(tmp_path / "report" / "table3_by_object_count.csv") as f:
        t3 = {(r["method"], r["objects"]): r for r in csv.DictReader(f)}
    assert t3[("ale", "1")]["bg_psnr"] == "20.0" and t3[("ale", "1")]["bg_psnr_inf"] == "1"
    assert t3[("ale", "1")]["ti_leakage"] == "nan" and t3[("ale", "2")]["ti_leakage_low"] == "0.5"
    with Image.open(files.chart) as chart:
        assert chart.width > 1000
