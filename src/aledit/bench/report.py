"""Report of benchmark runs: the paper's tables (Markdown and CSV), a bar chart and a gallery.

Tables follow the paper's layout: Table 1 by method, Table 2 by edit type, Table 3 by number of
edited objects, with the columns TE, TI (CLIP score, lower is better), SD (structure distance),
Edited (CLIP score of the edited regions), and background PSNR, LPIPS, MSE, SSIM. They are
pandas DataFrames grouped by method / edit type / object count; the Markdown and the CSV files
are written from the same frames.

A cell is the mean over the *finite* values of the successful edits of its group: NaN (a metric
not computed, TI of one object) is left out, and so is an infinite background PSNR (an edit that
left the background untouched, bit for bit); column ``PSNR ∞`` (CSV ``bg_psnr_inf``) counts
those edits. The ALE authors' ``evaluate_ale.py`` takes pandas' ``mean``, which skips NaN but
gives ``inf`` for a group with any infinite PSNR: where ``PSNR ∞`` is 0 the two agree, elsewhere
theirs is ``inf``. ``N`` counts the successful edits, ``failed`` the rest. Every mean has a 95%
percentile-bootstrap interval (:func:`aledit.reporting.mean_ci`, ``scipy.stats.bootstrap``,
2,000 resamples, seed 0) over the same finite values: shown in Table 1, in the CSV files as
``<metric>_low`` / ``<metric>_high`` and as the chart's error bars. The chart (matplotlib)
groups bars by number of edited objects, one bar per method, ``n/a`` where a metric has no
value (TI of one object, LPIPS not computed).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from ..edits import EditType
from ..io import save_image_atomic, save_text_atomic
from ..reporting import N_RESAMPLES, SEED, MeanCI, Metric, grouped_bar_chart, summarize, to_markdown
from .dataset import MASK_SUFFIX, find_image
from .store import STATUS_OK, ResultRow, read_results

__all__ = [
    "COLUMNS",
    "Column",
    "ReportError",
    "ReportFiles",
    "gallery_image",
    "method_labels",
    "metrics_chart",
    "results_frame",
    "summary_frame",
    "write_report",
]


class ReportError(ValueError):
    """A report that cannot be made from what was given (no results, unknown edit id, ...)."""


@dataclass(frozen=True)
class Column:
    """A table column: header, result key, whether lower is better, and decimals shown."""

    header: str
    key: str
    lower_is_better: bool
    decimals: int

    @property
    def title(self) -> str:
        return f"{self.header} {'↓' if self.lower_is_better else '↑'}"


COLUMNS = (
    Column("TE Leakage CS", "te_leakage", True, 2),
    Column("TI Leakage CS", "ti_leakage", True, 2),
    Column("SD", "structure_distance", True, 4),
    Column("Edited CS", "edited_clip", False, 2),
    Column("PSNR", "bg_psnr", False, 2),
    Column("LPIPS", "bg_lpips", True, 4),
    Column("MSE", "bg_mse", True, 5),
    Column("SSIM", "bg_ssim", False, 4),
)
METRIC_KEYS = tuple(c.key for c in COLUMNS)
PSNR_INF = "PSNR ∞"  # Markdown header of the count of untouched backgrounds (CSV: bg_psnr_inf)
TYPE_TITLES = {
    EditType.COLOR.value: "Color",
    EditType.OBJECT.value: "Object",
    EditType.MATERIAL.value: "Material",
    EditType.COLOR_OBJECT.value: "Color+Object",
    EditType.OBJECT_MATERIAL.value: "Object+Material",
}


@dataclass(frozen=True)
class ReportFiles:
    """Paths of what :func:`write_report` wrote (``gallery`` is ``None`` unless asked for)."""

    markdown: Path
    tables: tuple[Path, ...]
    rows: Path
    chart: Path
    gallery: Path | None


# -- numbers ---------------------------------------------------------------------------------


def _fmt_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def method_labels(rows: Sequence[ResultRow]) -> dict[tuple[str, str], str]:
    """A readable label per ``(method, config id)``: the method's name, plus the settings that
    differ between its configs, e.g. ``"ale (background_blend=off)"``."""
    configs: dict[str, dict[str, Mapping]] = defaultdict(dict)
    for row in rows:
        configs[row.method][row.config_id] = row.config
    labels = {}
    for method, by_id in configs.items():
        if len(by_id) == 1:
            labels[(method, next(iter(by_id)))] = method
            continue
        keys = sorted({k for c in by_id.values() for k in c})
        varying = [
            k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in by_id.values()}) > 1
        ]
        for cid, config in by_id.items():
            parts = ", ".join(f"{k}={_fmt_value(config.get(k))}" for k in varying)
            labels[(method, cid)] = f"{method} ({parts})"
    return labels


def results_frame(rows: Sequence[ResultRow], labels: Mapping[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """One DataFrame row per result, sorted by method label and edit id: ``edit_id``, ``method``
    (the label of :func:`method_labels`; categorical, sorted), ``config_id``, ``image``,
    ``edit_type`` (categorical in :class:`EditType` order, unknown types after), ``objects``,
    ``edits``, ``seed``, ``status``, ``error``, ``seconds``, every metric of :data:`COLUMNS`
    (NaN when not computed) and ``output``."""
    labels = labels if labels is not None else method_labels(rows)
    frame = pd.DataFrame(
        {
            "edit_id": r.edit_id,
            "method": labels[(r.method, r.config_id)],
            "config_id": r.config_id,
            "image": r.image,
            "edit_type": r.edit_type,
            "objects": r.num_objects,
            "edits": "; ".join(f"{s} -> {t}" for s, t in r.pairs),
            "seed": r.seed,
            "status": r.status,
            "error": r.error or "",
            "seconds": math.nan if r.seconds is None else r.seconds,
            **{key: r.metric(key) for key in METRIC_KEYS},
            "output": r.output or "",
        }
        for r in rows
    )
    types = [t.value for t in EditType]
    types += sorted(set(frame["edit_type"]) - set(types))
    frame["method"] = pd.Categorical(frame["method"], categories=sorted(set(frame["method"])))
    frame["edit_type"] = pd.Categorical(frame["edit_type"], categories=types)
    return frame.sort_values(["method", "edit_id"], kind="stable", ignore_index=True)


def summary_frame(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by`` (sorted): the ``by`` columns, ``n`` (successful edits),
    ``failed``, and per metric its mean over the finite values of the successful edits with
    ``_low`` / ``_high`` (95% bootstrap CI), ``_n`` (finite values) and ``_inf`` (infinite
    values) columns (:func:`aledit.reporting.summarize`)."""
    by = list(by)
    ok = frame["status"] == STATUS_OK
    counts = (
        frame.assign(n=ok.astype(int), failed=(~ok).astype(int))
        .groupby(by, sort=True, observed=True)[["n", "failed"]]
        .sum()
        .reset_index()
    )
    stats = summarize(frame[ok], by, METRIC_KEYS).drop(columns="size")
    out = counts.merge(stats, on=by, how="left", sort=False)
    count_columns = [f"{k}{s}" for k in METRIC_KEYS for s in ("_n", "_inf")]
    out[count_columns] = out[count_columns].fillna(0).astype(int)
    return out


def _cell(row, col: Column, with_ci: bool) -> str:
    ci = MeanCI(row[col.key], row[f"{col.key}_low"], row[f"{col.key}_high"], int(row[f"{col.key}_n"]))
    if ci.n == 0:
        return "n/a"
    return ci.format(col.decimals) if with_ci else f"{ci.mean:.{col.decimals}f}"


def _markdown(summary: pd.DataFrame, keys: Mapping[str, str], with_ci: bool = False) -> str:
    """Markdown of a :func:`summary_frame`: ``keys`` maps its key columns to headers."""
    table = pd.DataFrame({header: summary[column] for column, header in keys.items()})
    if "edit_type" in keys:
        header = keys["edit_type"]
        table[header] = [TYPE_TITLES.get(t, t) for t in table[header]]
    for col in COLUMNS:
        table[col.title] = [_cell(row, col, with_ci) for _, row in summary.iterrows()]
    table[PSNR_INF] = summary["bg_psnr_inf"]
    table["N"] = summary["n"]
    table["failed"] = summary["failed"]
    return to_markdown(table, right=[*(c.title for c in COLUMNS), PSNR_INF, "N", "failed"])


def _csv(summary: pd.DataFrame, keys: Mapping[str, str]) -> str:
    """CSV of a :func:`summary_frame`: key columns (renamed by ``keys``), the means, ``n``,
    ``failed``, ``bg_psnr_inf``, then each metric's ``_low``, ``_high`` and ``_n``."""
    columns = [
        *keys, *METRIC_KEYS, "n", "failed", "bg_psnr_inf",
        *(f"{k}{s}" for k in METRIC_KEYS for s in ("_low", "_high", "_n")),
    ]
    return summary[columns].rename(columns=keys).to_csv(index=False, na_rep="nan", lineterminator="\n")


# -- pictures --------------------------------------------------------------------------------


def metrics_chart(frame: pd.DataFrame, columns: Sequence[Column] = COLUMNS) -> Image.Image:
    """Grouped bars (matplotlib): one panel per metric, on its x axis all edits and each number
    of edited objects, one bar per method with its 95% CI and its mean written above; ``n/a``
    where a metric has no value (TI of one object, a metric not computed)."""
    ok = frame[frame["status"] == STATUS_OK]
    keys = [c.key for c in columns]
    overall = summarize(ok.assign(group="all edits"), ["group", "method"], keys)
    by_count = summarize(ok, ["objects", "method"], keys)
    by_count.insert(0, "group", [f"{c} obj" for c in by_count["objects"]])
    summary = pd.concat([overall, by_count.drop(columns="objects")], ignore_index=True)
    summary["method"] = summary["method"].astype(str)
    metrics = [Metric(c.key, c.header, not c.lower_is_better, c.decimals) for c in columns]
    return grouped_bar_chart(
        summary, metrics, group="group", series="method", ncols=2, panel_size=(7.0, 3.0),
        title=f"Benchmark: mean over successful edits and 95% bootstrap CI ({len(ok)} edits)",
    )


def _tile(text: str, size: tuple[int, int]) -> Image.Image:
    tile = Image.new("RGB", size, (225, 225, 225))
    ImageDraw.Draw(tile).text((6, size[1] // 2 - 6), text, fill=(90, 0, 0))
    return tile


def check_gallery(
    edit_ids: Sequence[str], rows: Sequence[ResultRow], bench_root: str | os.PathLike | None = None
) -> dict[str, list[ResultRow]]:
    """The results of each gallery edit, by edit id; :class:`ReportError` (before anything is
    written) for an id with no result or whose source image cannot be found."""
    by_edit: dict[str, list[ResultRow]] = defaultdict(list)
    for row in rows:
        by_edit[row.edit_id].append(row)
    unknown = [e for e in edit_ids if e not in by_edit]
    if unknown:
        some = ", ".join(sorted(by_edit)[:5])
        raise ReportError(f"--gallery: no results for edit {unknown[0]!r} in these runs (ids look like: {some}, ...)")
    for edit_id in edit_ids:
        first = by_edit[edit_id][0]
        root = Path(bench_root) if bench_root is not None else Path(first.bench or ".")
        if find_image(root / "images", first.image) is None:
            raise ReportError(
                f"source image {first.image!r} of edit {edit_id!r} not found in {root / 'images'}; pass --bench BENCH"
            )
    return by_edit


def gallery_image(
    edit_ids: Sequence[str],
    rows: Sequence[ResultRow],
    labels: Mapping[tuple[str, str], str],
    bench_root: str | os.PathLike | None = None,
    height: int = 192,
) -> Image.Image:
    """One row per edit: source | masks | the edit of each method (a grey tile where it failed).

    The source and masks come from ``bench_root``, or the benchmark folder each result records.
    """
    import torch

    from ..masks.ops import load_mask
    from ..visualize import mask_overlay, side_by_side

    by_edit = check_gallery(edit_ids, rows, bench_root)
    order = sorted(labels.values())
    strips = []
    for edit_id in edit_ids:
        results = sorted(by_edit[edit_id], key=lambda r: labels[(r.method, r.config_id)])
        first = results[0]
        root = Path(bench_root) if bench_root is not None else Path(first.bench or ".")
        source_path = find_image(root / "images", first.image)
        if source_path is None:
            raise ReportError(
                f"source image {first.image!r} of edit {edit_id!r} not found in {root / 'images'}; pass --bench BENCH"
            )
        with Image.open(source_path) as im:
            source = im.convert("RGB")
        small = source.resize((max(1, round(source.width * height / source.height)), height))
        names = [s for s, _ in first.pairs]
        masks = []
        for name in names:
            path = root / "masks" / first.image / f"{name}{MASK_SUFFIX}"
            masks.append(
                load_mask(path, size=small.size, name=name)
                if path.is_file()
                else torch.zeros(small.size[::-1], dtype=torch.bool)
            )
        pictures, captions = [small, mask_overlay(small, torch.stack(masks), names)], ["source", "masks"]
        got = {labels[(r.method, r.config_id)]: r for r in results}
        for label in order:
            row = got.get(label)
            if row is not None and row.status == STATUS_OK and row.output and Path(row.output).is_file():
                with Image.open(row.output) as im:
                    pictures.append(im.convert("RGB"))
            else:
                pictures.append(_tile("failed" if row is not None else "not run", small.size))
            captions.append(label)
        strip = side_by_side(pictures, captions, height=height)
        header = Image.new("RGB", (strip.width, 20), "white")
        ImageDraw.Draw(header).text(
            (4, 4), f"{edit_id}  [{first.edit_type}]  " + "; ".join(f"{s} -> {t}" for s, t in first.pairs), fill="black"
        )
        strips.append((header, strip))
    width = max(s.width for _, s in strips)
    canvas = Image.new("RGB", (width, sum(h.height + s.height + 8 for h, s in strips)), "white")
    y = 0
    for header, strip in strips:
        canvas.paste(header, (0, y))
        canvas.paste(strip, (0, y + header.height))
        y += header.height + strip.height + 8
    return canvas


# -- the report ------------------------------------------------------------------------------


def _missing_metrics_note(rows: Sequence[ResultRow]) -> list[str]:
    """A paragraph (and blank line) on results stored without metrics, or nothing."""
    missing = [r for r in rows if r.status == STATUS_OK and r.metrics_config.get("computed") is False]
    if not missing:
        return []
    return [
        f"**{len(missing)} of {len(rows)} results have no metrics** (their run used `--no-metrics`), so their "
        "metric cells are empty (NaN). To fill them, run the same `aledit bench run` command again without "
        "`--no-metrics`: it computes the metrics from the stored images and redoes no edit.",
        "",
    ]


TABLES = (
    ("Table 1. By method", "table1_by_method.csv", {"method": "Method"}, True),
    ("Table 2. By edit type", "table2_by_edit_type.csv", {"method": "Method", "edit_type": "Editing Type"}, False),
    (
        "Table 3. By number of edited objects",
        "table3_by_object_count.csv",
        {"method": "Method", "objects": "# of Editing Objects"},
        False,
    ),
)


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    gallery: Sequence[str] = (),
    bench_root: str | os.PathLike | None = None,
) -> ReportFiles:
    """Merges every rank's results of ``run_dirs`` and writes into ``out_dir``: ``report.md``,
    ``table1_by_method.csv``, ``table2_by_edit_type.csv``, ``table3_by_object_count.csv``,
    ``rows.csv`` (one line per result), ``metrics.png`` and, for ``gallery`` ids, ``gallery.png``.
    """
    for d in run_dirs:
        if not Path(d).is_dir():
            raise ReportError(f"run folder not found: {d}")
    rows = read_results(run_dirs)
    if not rows:
        raise ReportError(
            f"no results in {', '.join(map(str, run_dirs))} (no results-rank*.sqlite with rows); "
            "run 'aledit bench run' first"
        )
    check_gallery(gallery, rows, bench_root)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = method_labels(rows)
    frame = results_frame(rows, labels)
    ok = int((frame["status"] == STATUS_OK).sum())
    infinite = int(frame.loc[frame["status"] == STATUS_OK, "bg_psnr"].map(math.isinf).sum())
    md = [
        "# Benchmark report",
        "",
        f"Runs: {', '.join(str(Path(d)) for d in run_dirs)}. Results: {ok} edited, {len(frame) - ok} failed.",
        "",
        *_missing_metrics_note(rows),
        (
            "TE, TI and Edited are CLIP scores (x100); SD is the DINO structure distance; PSNR, LPIPS, MSE and "
            "SSIM are measured outside the edited objects. A cell is the mean over the finite values of the "
            "group's successful edits: n/a where there are none (metric not computed; TI of one object). "
            f"An untouched background has PSNR = inf: such edits are left out of the PSNR mean and counted in "
            f"`{PSNR_INF}` ({infinite} in all; the ALE authors' pandas mean would be inf for any group with one). "
            f"Table 1 gives the 95% percentile-bootstrap CI (`scipy.stats.bootstrap`, {N_RESAMPLES:,} resamples, "
            f"seed {SEED}) in brackets; the CSV files give it for every table (`<metric>_low`, `<metric>_high`)."
        ),
    ]
    csv_paths = []
    for title, filename, keys, with_ci in TABLES:
        summary = summary_frame(frame, list(keys))
        md += ["", f"## {title}", "", _markdown(summary, keys, with_ci)]
        save_text_atomic(_csv(summary, {k: k for k in keys}), out / filename)
        csv_paths.append(out / filename)
    md += ["", "## Methods", ""]
    for (method, cid), name in sorted(labels.items(), key=lambda kv: kv[1]):
        config = next(r.config for r in rows if r.method == method and r.config_id == cid)
        md.append(f"- **{name}** (config `{cid}`): `{json.dumps(config, sort_keys=True, default=str)}`")
    failures = frame[frame["status"] != STATUS_OK]
    if len(failures):
        shown = failures.head(100)
        table = pd.DataFrame(
            {"Edit": shown["edit_id"], "Method": shown["method"].astype(str), "Error": shown["error"].str[:200]}
        )
        md += ["", "## Failed edits", "", to_markdown(table)]
        if len(failures) > 100:
            md.append(f"| ... | | {len(failures) - 100} more in rows.csv |")
    save_text_atomic("\n".join(md) + "\n", out / "report.md")

    columns = ["edit_id", "method", "config_id", "image", "edit_type", "objects", "edits", "seed", "status", "error",
               "seconds", *METRIC_KEYS, "output"]
    seconds = [f"{v:.3f}" if math.isfinite(v) else "" for v in frame["seconds"]]
    listing = frame[columns].assign(seconds=seconds)
    save_text_atomic(listing.to_csv(index=False, na_rep="nan", lineterminator="\n"), out / "rows.csv")

    chart = out / "metrics.png"
    save_image_atomic(metrics_chart(frame), chart)
    gallery_path = None
    if gallery:
        gallery_path = out / "gallery.png"
        save_image_atomic(gallery_image(list(gallery), rows, labels, bench_root), gallery_path)
    return ReportFiles(out / "report.md", tuple(csv_paths), out / "rows.csv", chart, gallery_path)
