"""Report of benchmark runs: the paper's tables (Markdown and CSV), a bar chart and a gallery.

Tables follow the paper's layout: Table 1 by method, Table 2 by edit type, Table 3 by number of
edited objects, with the columns TE, TI (CLIP score, lower is better), SD (structure distance),
Edited (CLIP score of the edited regions), and background PSNR, LPIPS, MSE, SSIM. A cell is the
mean over the successful edits of its group, skipping NaN (a metric not computed, TI of one
object) and infinite values (PSNR of an untouched background), as pandas' ``mean`` does for
NaN in the authors' ``evaluate_ale.py``. ``N`` counts the successful edits, ``failed`` the rest.

Pictures are drawn with PIL only, so a report needs no plotting library.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..edits import EditType
from ..io import save_image_atomic, save_text_atomic
from ..visualize import PALETTE
from .dataset import MASK_SUFFIX, find_image
from .store import STATUS_OK, ResultRow, read_results

__all__ = [
    "COLUMNS",
    "Column",
    "ReportError",
    "ReportFiles",
    "bar_chart",
    "gallery_image",
    "method_labels",
    "summarize",
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
_SHORT = {"te_leakage": "TE", "ti_leakage": "TI", "structure_distance": "SD", "edited_clip": "Edited"}
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


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(
    rows: Sequence[ResultRow], group: Callable[[ResultRow], tuple], labels: Mapping[tuple[str, str], str] | None = None
) -> list[dict]:
    """One dict per group (sorted by key): ``{"key": group key, "n": ok edits, "failed": ...,
    <metric key>: mean}``. ``group(row)`` gives the key; ``labels`` maps (method, config id) to
    the label ``group`` may use via ``row``."""
    buckets: dict[tuple, list[ResultRow]] = defaultdict(list)
    for row in rows:
        buckets[group(row)].append(row)
    out = []
    for key in sorted(buckets):
        ok = [r for r in buckets[key] if r.status == STATUS_OK]
        entry = {"key": key, "n": len(ok), "failed": len(buckets[key]) - len(ok)}
        for col in COLUMNS:
            entry[col.key] = _mean([r.metric(col.key) for r in ok])
        out.append(entry)
    return out


def _cell(value: float, decimals: int) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value:.{decimals}f}"


def _markdown_table(headers: Sequence[str], summary: Sequence[dict], key_cells: Callable[[tuple], list[str]]) -> str:
    lines = ["| " + " | ".join([*headers, *(c.title for c in COLUMNS), "N", "failed"]) + " |"]
    lines.append("|" + "|".join(["---"] * len(headers) + ["---:"] * (len(COLUMNS) + 2)) + "|")
    for entry in summary:
        cells = [*key_cells(entry["key"]), *(_cell(entry[c.key], c.decimals) for c in COLUMNS)]
        lines.append("| " + " | ".join([*cells, str(entry["n"]), str(entry["failed"])]) + " |")
    return "\n".join(lines)


def _csv_text(headers: Sequence[str], summary: Sequence[dict], key_cells: Callable[[tuple], list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*headers, *(c.key for c in COLUMNS), "n", "failed"])
    for entry in summary:
        writer.writerow(
            [*key_cells(entry["key"]), *(repr(float(entry[c.key])) for c in COLUMNS), entry["n"], entry["failed"]]
        )
    return buffer.getvalue()


# -- pictures --------------------------------------------------------------------------------


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _arrow(draw: ImageDraw.ImageDraw, x: float, y: float, down: bool, size: int = 10) -> None:
    """A small filled triangle (the default font has no arrow glyphs): down = lower is better."""
    tip, base = (y + size, y) if down else (y, y + size)
    draw.polygon([(x, base), (x + size, base), (x + size / 2, tip)], fill=(70, 70, 70))


def bar_chart(summary: Sequence[dict], names: Sequence[str], columns: Sequence[Column] = COLUMNS) -> Image.Image:
    """One panel per metric (an arrow says which way is better), one bar per entry of ``summary``
    (labelled by ``names``), value on top; a legend below. Non-finite means are marked ``n/a``."""
    panel_w, panel_h, cols = 250, 210, 4
    rows_n = math.ceil(len(columns) / cols)
    legend_h = 24 * len(names) + 16
    image = Image.new("RGB", (panel_w * cols, panel_h * rows_n + legend_h), "white")
    draw = ImageDraw.Draw(image)
    title_font, small = _font(15), _font(11)
    for i, col in enumerate(columns):
        x0, y0 = (i % cols) * panel_w, (i // cols) * panel_h
        draw.text((x0 + 10, y0 + 6), col.header, fill="black", font=title_font)
        _arrow(draw, x0 + 16 + draw.textlength(col.header, font=title_font), y0 + 8, down=col.lower_is_better)
        values = [entry[col.key] for entry in summary]
        finite = [v for v in values if math.isfinite(v)]
        top = max(finite, default=0.0)
        top = top * 1.15 if top > 0 else 1.0
        base_y, plot_h = y0 + panel_h - 18, panel_h - 58
        draw.line([x0 + 10, base_y, x0 + panel_w - 10, base_y], fill=(120, 120, 120))
        slot = (panel_w - 30) / max(1, len(values))
        for j, value in enumerate(values):
            bx = x0 + 15 + j * slot
            bw = max(4.0, slot * 0.7)
            if math.isfinite(value):
                h = max(1.0, plot_h * max(value, 0.0) / top)
                draw.rectangle([bx, base_y - h, bx + bw, base_y], fill=PALETTE[j % len(PALETTE)])
                draw.text((bx, base_y - h - 14), f"{value:.{col.decimals}f}", fill="black", font=small)
            else:
                draw.text((bx, base_y - 14), "n/a", fill=(120, 120, 120), font=small)
    ly = panel_h * rows_n + 8
    for j, name in enumerate(names):
        draw.rectangle([12, ly + 24 * j, 28, ly + 24 * j + 16], fill=PALETTE[j % len(PALETTE)])
        draw.text((36, ly + 24 * j), name, fill="black", font=title_font)
    return image


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

    def label(r: ResultRow) -> str:
        return labels[(r.method, r.config_id)]

    type_rank = {t.value: i for i, t in enumerate(EditType)}
    by_method = summarize(rows, lambda r: (label(r),))
    by_type = summarize(rows, lambda r: (label(r), type_rank.get(r.edit_type, 99), r.edit_type))
    by_count = summarize(rows, lambda r: (label(r), r.num_objects))
    tables = [
        (
            "Table 1. By method",
            "table1_by_method.csv",
            ["Method"],
            ["method"],
            by_method,
            lambda k: [k[0]],
            lambda k: [k[0]],
        ),
        (
            "Table 2. By edit type",
            "table2_by_edit_type.csv",
            ["Method", "Editing Type"],
            ["method", "edit_type"],
            by_type,
            lambda k: [k[0], TYPE_TITLES.get(k[2], k[2])],
            lambda k: [k[0], k[2]],
        ),
        (
            "Table 3. By number of edited objects",
            "table3_by_object_count.csv",
            ["Method", "# of Editing Objects"],
            ["method", "objects"],
            by_count,
            lambda k: [k[0], str(k[1])],
            lambda k: [k[0], k[1]],
        ),
    ]
    ok = sum(r.status == STATUS_OK for r in rows)
    md = [
        "# Benchmark report",
        "",
        f"Runs: {', '.join(str(Path(d)) for d in run_dirs)}. Results: {ok} edited, {len(rows) - ok} failed.",
        "",
        *_missing_metrics_note(rows),
        (
            "TE, TI and Edited are CLIP scores (x100); SD is the DINO structure distance; PSNR, LPIPS, MSE and "
            "SSIM are measured outside the edited objects. Means skip NaN (metric not computed; TI of one object) "
            "and infinite values (PSNR of an untouched background)."
        ),
    ]
    csv_paths = []
    for title, filename, md_headers, csv_headers, summary, md_keys, csv_keys in tables:
        md += ["", f"## {title}", "", _markdown_table(md_headers, summary, md_keys)]
        save_text_atomic(_csv_text(csv_headers, summary, csv_keys), out / filename)
        csv_paths.append(out / filename)
    md += ["", "## Methods", ""]
    for (method, cid), name in sorted(labels.items(), key=lambda kv: kv[1]):
        config = next(r.config for r in rows if r.method == method and r.config_id == cid)
        md.append(f"- **{name}** (config `{cid}`): `{json.dumps(config, sort_keys=True, default=str)}`")
    failures = [r for r in rows if r.status != STATUS_OK]
    if failures:
        md += ["", "## Failed edits", "", "| Edit | Method | Error |", "|---|---|---|"]
        for r in sorted(failures, key=lambda r: (label(r), r.edit_id))[:100]:
            md.append(f"| {r.edit_id} | {label(r)} | {(r.error or '').replace('|', '/')[:200]} |")
        if len(failures) > 100:
            md.append(f"| ... | | {len(failures) - 100} more in rows.csv |")
    save_text_atomic("\n".join(md) + "\n", out / "report.md")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "edit_id",
            "method",
            "config_id",
            "image",
            "edit_type",
            "objects",
            "edits",
            "seed",
            "status",
            "error",
            "seconds",
            *(c.key for c in COLUMNS),
            "output",
        ]
    )
    for r in sorted(rows, key=lambda r: (label(r), r.edit_id)):
        writer.writerow(
            [
                r.edit_id,
                label(r),
                r.config_id,
                r.image,
                r.edit_type,
                r.num_objects,
                "; ".join(f"{s} -> {t}" for s, t in r.pairs),
                r.seed,
                r.status,
                r.error or "",
                "" if r.seconds is None else f"{r.seconds:.3f}",
                *(repr(r.metric(c.key)) for c in COLUMNS),
                r.output or "",
            ]
        )
    save_text_atomic(buffer.getvalue(), out / "rows.csv")

    chart = out / "metrics.png"
    save_image_atomic(bar_chart(by_method, [e["key"][0] for e in by_method]), chart)
    gallery_path = None
    if gallery:
        gallery_path = out / "gallery.png"
        save_image_atomic(gallery_image(list(gallery), rows, labels, bench_root), gallery_path)
    return ReportFiles(out / "report.md", tuple(csv_paths), out / "rows.csv", chart, gallery_path)
