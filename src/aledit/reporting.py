"""Tables and charts of scores, shared by ``aledit bench report``, ``aledit bench synthetic`` and
``aledit demo``: pandas groups the scores, ``scipy.stats.bootstrap`` gives the confidence
intervals, matplotlib draws the charts.

* :func:`mean_ci`: the mean of the *finite* values and its 95% percentile-bootstrap interval
  (``scipy.stats.bootstrap(method="percentile")``, 2,000 resamples, ``numpy`` generator seeded
  with 0). NaN (a score that does not apply, e.g. TI leakage of a one-object edit) and infinite
  values (background PSNR of an untouched background) are left out, and ``n`` says how many
  values remained; :func:`summarize` also counts the infinite values, so a report can show them.
* :func:`summarize`: one row per group of a DataFrame (``groupby``), with ``<key>``,
  ``<key>_low``, ``<key>_high``, ``<key>_n`` and ``<key>_inf`` columns per score.
* :func:`to_markdown`: a Markdown table from a DataFrame (its cells as they are).
* :func:`grouped_bar_chart`: one panel per score, bars grouped on the x axis (e.g. all edits,
  1, 2, 3 edited objects), one bar per series (method) with its 95% interval as an error bar and
  its value written above; ``n/a`` where a score has no finite value in that group.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "CONFIDENCE",
    "N_RESAMPLES",
    "SEED",
    "MeanCI",
    "Metric",
    "grouped_bar_chart",
    "mean_ci",
    "paired_difference_ci",
    "summarize",
    "to_markdown",
]

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0

# Bar colours (colour-blind friendly, matplotlib's "tab10" order without the red/green clash).
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


@dataclass(frozen=True)
class MeanCI:
    """A mean with its confidence interval.

    Attributes:
        mean: mean of the finite values (NaN when there are none).
        low, high: interval bounds (equal to the mean when n == 1; NaN when n == 0).
        n: number of finite values.
    """

    mean: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_ci(
    values: Iterable[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> MeanCI:
    """Mean of the finite ``values`` and its percentile-bootstrap confidence interval.

    ``scipy.stats.bootstrap`` with ``method="percentile"``: ``n_resamples`` resamples with
    replacement drawn at once by ``numpy.random.default_rng(seed)`` (reproducible), the interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (linear
    interpolation) of their means, widened to contain the mean if it does not. One value gives
    the interval ``[value, value]``; no finite value gives NaN with ``n = 0``.
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return MeanCI(mean, mean, mean, 1)
    result = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = (float(v) for v in result.confidence_interval)
    return MeanCI(mean, min(low, mean), max(high, mean), int(x.size))


def paired_difference_ci(a: Sequence[float], b: Sequence[float], **kwargs) -> MeanCI:
    """CI of the mean of ``a - b`` over pairs where both are finite (same edits, two configs)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return mean_ci(a - b, **kwargs)


def summarize(frame: pd.DataFrame, by: Sequence[str], keys: Sequence[str], **ci_kwargs) -> pd.DataFrame:
    """One row per group of ``frame.groupby(by)`` (sorted; categorical columns sort in their
    categories' order, empty categories left out): the ``by`` columns, ``size`` (rows in the
    group) and per score ``key``: ``key`` (mean of the finite values), ``key_low``,
    ``key_high`` (:func:`mean_ci`), ``key_n`` (finite values) and ``key_inf`` (infinite values)."""
    by = list(by)
    columns = [*by, "size", *(f"{k}{s}" for k in keys for s in ("", "_low", "_high", "_n", "_inf"))]
    rows = []
    for group_key, group in frame.groupby(by, sort=True, observed=True):
        entry = dict(zip(by, group_key)) | {"size": len(group)}
        for key in keys:
            values = group[key].to_numpy(dtype=np.float64)
            ci = mean_ci(values, **ci_kwargs)
            entry |= {key: ci.mean, f"{key}_low": ci.low, f"{key}_high": ci.high, f"{key}_n": ci.n}
            entry[f"{key}_inf"] = int(np.isinf(values).sum())
        rows.append(entry)
    out = pd.DataFrame(rows, columns=columns)
    for column in by:  # keep a categorical key categorical (its order), as groupby gave it
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            out[column] = pd.Categorical(out[column], categories=frame[column].cat.categories)
    return out


def to_markdown(frame: pd.DataFrame, right: Iterable[str] = ()) -> str:
    """A Markdown table of ``frame`` (header from its columns, cells with ``str``); columns in
    ``right`` are right-aligned. ``|`` in a cell is written as ``/``."""
    right = set(right)

    def cell(value) -> str:
        return str(value).replace("|", "/")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |"]
    lines.append("|" + "|".join("---:" if c in right else "---" for c in frame.columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Metric:
    """A score in a chart or table: result key, title, which way is better, decimals shown."""

    key: str
    title: str
    higher_is_better: bool
    decimals: int = 3

    @property
    def arrow_title(self) -> str:
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"


def grouped_bar_chart(
    summary: pd.DataFrame,
    metrics: Sequence[Metric],
    group: str,
    series: str,
    *,
    ncols: int = 1,
    panel_size: tuple[float, float] = (9.0, 3.0),
    title: str | None = None,
) -> Image.Image:
    """Grouped bars of a :func:`summarize` frame, drawn with matplotlib (Agg canvas, no pyplot).

    One panel per metric; on its x axis the values of column ``group`` (in order of first
    appearance), in each group one bar per value of ``series`` (same order, same colour in every
    panel) with its confidence interval as an error bar and the mean written above it. A bar
    without a finite mean (``<key>_n == 0``) is replaced by ``n/a`` (by ``∞`` when its values
were all infinite). Returns an RGB image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = list(dict.fromkeys(summary[group]))
    names = list(dict.fromkeys(summary[series]))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    width = 0.8 / max(1, len(names))
    label_size = 7 if len(groups) * len(names) <= 24 else 6
    indexed = summary.set_index([group, series])
    for ax, metric in zip(axes, metrics):
        lows, highs = [0.0], [0.0]
        for k, name in enumerate(names):
            for g, group_value in enumerate(groups):
                x = g - 0.4 + (k + 0.5) * width
                if (group_value, name) not in indexed.index:
                    continue
                row = indexed.loc[(group_value, name)]
                if row[f"{metric.key}_n"] == 0 or not math.isfinite(row[metric.key]):
                    only_inf = row.get(f"{metric.key}_inf", 0) > 0  # e.g. every background untouched: PSNR inf
                    text = "∞" if only_inf else "n/a"
                    ax.text(x, 0, text, rotation=90, ha="center", va="bottom", fontsize=label_size, color="0.45")
                    continue
                mean, low, high = (float(row[f"{metric.key}{s}"]) for s in ("", "_low", "_high"))
                ax.bar(
                    x, mean, width * 0.92, color=_COLORS[k % len(_COLORS)],
                    yerr=[[mean - low], [high - mean]], capsize=2, error_kw={"elinewidth": 0.8, "capthick": 0.8},
                )
                ax.annotate(
                    f"{mean:.{metric.decimals}f}", (x, max(high, mean)), xytext=(0, 2), textcoords="offset points",
                    rotation=90, ha="center", va="bottom", fontsize=label_size,
                )
                lows.append(min(low, mean))
                highs.append(max(high, mean))
        top, bottom = max(highs), min(lows)
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - (0.05 * span if bottom < 0 else 0.0), top + 0.35 * span)
        ax.set_xticks(range(len(groups)), [str(g) for g in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_title(f"{metric.title} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", color="0.9")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles = [Patch(color=_COLORS[k % len(_COLORS)], label=str(n)) for k, n in enumerate(names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 7), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")
