"""``aledit bench synthetic``: the paper's ablation and the method comparison, measured exactly
on the synthetic world.

The benchmark draws ``n_edits`` edits (:func:`bench_cases`): edit ``i`` has type
``EDIT_TYPES[i % 5]`` (the paper's five) and edits ``1 + (i // 5) % 3`` objects of a random
3-object 64x64 scene, so every type meets every object count equally often. Each edit is run
with every configuration on the same noise seed (paired) and scored by
:func:`aledit.synthetic.score_edit` against the ideal edit. A configuration is either an ALE
ablation of :data:`~aledit.synthetic.model.ABLATION_SWITCHES` (naive, ORE, ORE+RGB-CAM, ORE+BB,
ALE) or any registered method (``ale``, ``p2p``, ``masactrl``, ``fpe``, ``infedit``, ...), run
with :meth:`SyntheticEditSettings.options` (same steps and guidance for all). Methods that need
masks get the exact scene masks; methods that only optionally use them (local blends) find
their regions from attention unless ``give_masks``.

Tables (Markdown) give the mean of each score and its 95% confidence interval from a
percentile bootstrap over edits (:func:`mean_ci`: 2,000 resamples with a fixed seed; NaN scores,
e.g. TI leakage of one-object edits, are left out and ``n`` says how many remained). Every
configuration sees the same edits, so differences between rows are paired;
:func:`paired_difference_ci` gives the CI of a difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..edits import EditType
from .metrics import score_edit
from .model import ABLATION_SWITCHES, SYNTHETIC_EDIT_SETTINGS, SyntheticEditSettings
from .scenes import (
    Scene,
    SceneEdit,
    SyntheticError,
    random_edit,
    random_scene,
    render_edit,
)

__all__ = [
    "EDIT_TYPES",
    "SCORE_KEYS",
    "BenchCase",
    "MeanCI",
    "SyntheticBenchResult",
    "bench_cases",
    "edit_case",
    "markdown_table",
    "mean_ci",
    "paired_difference_ci",
    "register",
    "resolve_config",
    "run_synthetic_bench",
]

logger = logging.getLogger(__name__)

EDIT_TYPES: tuple[EditType, ...] = (
    EditType.COLOR,
    EditType.OBJECT,
    EditType.MATERIAL,
    EditType.COLOR_OBJECT,
    EditType.OBJECT_MATERIAL,
)

# Scores in the tables: (key of EditScores.as_dict(), column title, higher is better).
SCORE_KEYS: tuple[tuple[str, str, bool], ...] = (
    ("success", "success", True),
    ("ti_leakage", "TI leakage", False),
    ("te_changed", "TE changed", False),
    ("te_target_color", "TE target colour", False),
    ("structure_kept", "structure kept", True),
    ("color_kept", "colour kept", True),
    ("material_kept", "material kept", True),
)


# ---------------------------------------------------------------------------------------------
# Confidence intervals


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
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> MeanCI:
    """Mean and percentile-bootstrap confidence interval of ``values`` (NaN left out).

    The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    means of ``n_resamples`` resamples with replacement, drawn with ``numpy``'s generator seeded
    by ``seed`` (reproducible). With all values equal the interval is that value.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return MeanCI(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return MeanCI(mean, float(min(low, mean)), float(max(high, mean)), int(x.size))


def paired_difference_ci(a: Sequence[float], b: Sequence[float], **kwargs) -> MeanCI:
    """CI of the mean of ``a - b`` over pairs where both are finite (same edits, two configs)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return mean_ci(a - b, **kwargs)


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True, eq=False)
class BenchCase:
    """One benchmark edit.

    Attributes:
        index: position in the benchmark (also the noise seed of its edits).
        scene: the source scene.
        edit: the edit (its type and objects).
        ideal: the ideal edited scene.
    """

    index: int
    scene: Scene
    edit: SceneEdit
    ideal: Scene

    @property
    def edit_type(self) -> EditType:
        return self.edit.edit_type

    @property
    def n_edit(self) -> int:
        return len(self.edit.objects)

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """``{source phrase: bool [H, W]}``: the exact visible mask of each edited object."""
        return {e.source_phrase: self.scene.masks[e.index].copy() for e in self.edit.objects}


def bench_cases(n_edits: int = 200, seed: int = 0, n_objects: int = 3, size: int = 64) -> list[BenchCase]:
    """The benchmark's edits (see the module docstring); case ``i`` depends only on ``(seed, i)``."""
    if n_edits < 1:
        raise ValueError(f"n_edits must be >= 1, got {n_edits}")
    if not 3 <= n_objects <= 9:
        raise ValueError(f"n_objects must be in [3, 9] (up to 3 objects are edited), got {n_objects}")
    cases = []
    for i in range(n_edits):
        edit_type = EDIT_TYPES[i % len(EDIT_TYPES)]
        n_edit = 1 + (i // len(EDIT_TYPES)) % 3
        rng = np.random.default_rng([seed, i])
        for _ in range(50):
            scene = random_scene(rng, n_objects, size)
            try:
                edit = random_edit(scene, edit_type, rng, n_edit=n_edit)
                break
            except SyntheticError:  # a shape edit that hides a neighbour: draw another scene
                continue
        else:
            raise SyntheticError(f"no valid {edit_type.value} edit of {n_edit} objects found for case {i}")
        cases.append(BenchCase(i, scene, edit, render_edit(scene, edit)))
    return cases


# Method variants the comparison names on their own (PIE-Bench's "ddim+p2p": P2P without NTI;
# DPL without NTI, and with no token learning, i.e. P2P with DPL's edit settings).
METHOD_VARIANTS: dict[str, tuple[str, dict]] = {
    "p2p-ddim": ("p2p", {"null_text": False}),
    "dpl-ddim": ("dpl", {"null_text": False}),
    "dpl-ddim-0": ("dpl", {"null_text": False, "max_iterations": 0}),  # P2P with DPL's edit settings
}


def resolve_config(name: str) -> tuple[str, dict]:
    """``(method, switches)`` of a configuration name: an ALE ablation (``"naive"``,
    ``"ORE+BB"``, ...), a registered method (``"p2p"``) or a variant of
    :data:`METHOD_VARIANTS` (``"p2p-ddim"``); ``ValueError`` otherwise."""
    from ..methods.registry import available_methods

    if name in ABLATION_SWITCHES:
        return "ale", dict(ABLATION_SWITCHES[name])
    if name in METHOD_VARIANTS:
        method, options = METHOD_VARIANTS[name]
        return method, dict(options)
    if name in available_methods():
        return name, {}
    raise ValueError(
        f"unknown configuration {name!r}; choose ALE ablations ({', '.join(ABLATION_SWITCHES)}) or methods "
        f"({', '.join(available_methods())}) or variants ({', '.join(METHOD_VARIANTS)})"
    )


def edit_case(
    pipe,
    case: BenchCase,
    config: str | dict,
    settings: SyntheticEditSettings = SYNTHETIC_EDIT_SETTINGS,
    give_masks: bool = False,
    inversion_cache=None,
) -> np.ndarray:
    """Runs one configuration (a name, or ALE switches as a dict) on one case; returns the
    edited image ``uint8 [H, W, 3]``."""
    from ..methods.base import MASKS_OPTIONAL, MASKS_REQUIRED
    from ..methods.registry import method_info

    method, switches = ("ale", config) if isinstance(config, dict) else resolve_config(config)
    uses = method_info(method).masks
    masks = case.masks if uses == MASKS_REQUIRED or (uses == MASKS_OPTIONAL and give_masks) else None
    out = pipe.edit(
        Image.fromarray(case.scene.image),
        case.edit.edits,
        masks,
        method=method,
        options=settings.options(method, **switches),
        seed=case.index,
        steps=settings.steps,
        size=settings.size,
        inversion_cache=inversion_cache,
        progress=False,
    )
    return np.asarray(out.image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Results


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: one header row, then ``rows`` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _titles(keys: Sequence[tuple[str, str, bool]]) -> list[str]:
    return [f"{title} {'↑' if up else '↓'}" for _, title, up in keys]


@dataclass(frozen=True)
class SyntheticBenchResult:
    """Scores of every (case, configuration).

    Attributes:
        records: one dict per run: ``case``, ``config``, ``edit_type``, ``n_edit`` and the
            scores of :meth:`EditScores.as_dict`.
        configs: configuration names in table order.
        settings: the engine settings used.
        seconds: wall time of the runs.
    """

    records: tuple[dict, ...]
    configs: tuple[str, ...]
    settings: SyntheticEditSettings = SYNTHETIC_EDIT_SETTINGS
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def values(self, config: str, key: str, where: Callable[[dict], bool] | None = None) -> np.ndarray:
        """Scores ``key`` of ``config`` in case order (optionally filtered)."""
        rows = [r for r in self.records if r["config"] == config and (where is None or where(r))]
        rows.sort(key=lambda r: r["case"])
        return np.array([r[key] for r in rows], dtype=np.float64)

    def summary(self, config: str, key: str, where=None) -> MeanCI:
        return mean_ci(self.values(config, key, where))

    @property
    def n_cases(self) -> int:
        return len({r["case"] for r in self.records})

    def ablation_table(self, keys: Sequence[tuple[str, str, bool]] = SCORE_KEYS) -> str:
        """Markdown: one row per configuration, mean [95% CI] of each score over all edits."""
        rows = [[config, *(self.summary(config, key).format() for key, _, _ in keys)] for config in self.configs]
        return markdown_table(["config", *_titles(keys)], rows)

    def object_count_table(self, keys: Sequence[tuple[str, str, bool]] = SCORE_KEYS[:4]) -> str:
        """Markdown: one row per (number of edited objects, configuration)."""
        rows = []
        for count in sorted({r["n_edit"] for r in self.records}):
            where = lambda r, c=count: r["n_edit"] == c
            for config in self.configs:
                n = len(self.values(config, "success", where))
                rows.append([str(count), config, str(n), *(self.summary(config, key, where).format() for key, _, _ in keys)])
        return markdown_table(["objects", "config", "n", *_titles(keys)], rows)

    def edit_type_table(self, key: str = "success") -> str:
        """Markdown: ``key`` per edit type (rows) and configuration (columns)."""
        rows = []
        for edit_type in EDIT_TYPES:
            where = lambda r, t=edit_type.value: r["edit_type"] == t
            if any(where(r) for r in self.records):
                rows.append([edit_type.value, *(self.summary(c, key, where).format(2) for c in self.configs)])
        return markdown_table(["edit type", *self.configs], rows)

    def difference_table(self, reference: str | None = None, keys=SCORE_KEYS[:4]) -> str:
        """Markdown: paired difference (config minus ``reference``, default ``naive`` when run,
        else the first configuration) with its 95% CI."""
        reference = reference or ("naive" if "naive" in self.configs else self.configs[0])
        rows = [
            [config, *(paired_difference_ci(self.values(config, k), self.values(reference, k)).format() for k, _, _ in keys)]
            for config in self.configs
            if config != reference
        ]
        return markdown_table([f"config − {reference}", *(f"Δ {t}" for _, t, _ in keys)], rows)

    def markdown(self) -> str:
        s = self.settings
        reference = "naive" if "naive" in self.configs else self.configs[0]
        masks = "given to every method that uses them" if self.extra.get("give_masks") else (
            "given to methods that need them (ALE); methods with an attention-derived blend found their own"
        )
        ablation = set(self.configs) <= set(ABLATION_SWITCHES)
        parts = [
            "# Synthetic benchmark: " + ("ALE ablation" if ablation else "methods"),
            "",
            (
                f"{self.n_cases} edits (the five edit types x 1-3 edited objects of 3-object 64x64 scenes), "
                "each run with every configuration on the same noise; exact pixel scores "
                "(`aledit.synthetic.score_edit`); mean [95% percentile-bootstrap CI, 2,000 resamples]. "
                f"Engine: steps {s.steps}, eta {s.eta}, target guidance {s.target_guidance}, size {s.size}, "
                f"mask dilation {s.dilation_ratio}; exact scene masks {masks}."
                + (f" {self.seconds:.0f} s." if self.seconds else "")
            ),
            "",
            "## Ablation" if ablation else "## Methods",
            "",
            self.ablation_table(),
            "",
            f"## Paired differences to {reference}",
            "",
            self.difference_table(),
            "",
            "## By number of edited objects",
            "",
            self.object_count_table(),
            "",
            "## Success by edit type",
            "",
            self.edit_type_table("success"),
            "",
            "## TI leakage by edit type",
            "",
            self.edit_type_table("ti_leakage"),
            "",
        ]
        return "\n".join(parts)

    def chart(self) -> Image.Image:
        """Bar chart (PIL): top row the ablation (success, TI leakage, TE changed), bottom row
        the same scores by number of edited objects; whiskers are the 95% CIs. Each score's
        axis runs from 0 to the smallest of 0.1, 0.25, 0.5, 1 that holds every interval."""
        keys = SCORE_KEYS[:3]
        counts = sorted({r["n_edit"] for r in self.records})
        panel_w, panel_h, margin, header = 300, 220, 40, 44
        image = Image.new("RGB", (panel_w * len(keys), 2 * (panel_h + margin) + header - 14), "white")
        draw = ImageDraw.Draw(image)
        palette = [(150, 150, 150), (70, 130, 200), (60, 170, 90), (230, 150, 40), (200, 50, 60)]
        rows = ([(None, "all edits")], [(c, f"{c} obj") for c in counts])
        for col, (key, title, up) in enumerate(keys):
            summaries = {
                (g, config): self.summary(config, key, None if g is None else (lambda r, c=g: r["n_edit"] == c))
                for groups in rows
                for g, _ in groups
                for config in self.configs
            }
            highs = [ci.high for ci in summaries.values() if ci.n]
            top_value = next((v for v in (0.1, 0.25, 0.5) if highs and max(highs) <= v), 1.0)
            for row, groups in enumerate(rows):
                x0, y0 = col * panel_w, row * (panel_h + margin) + header
                draw.text((x0 + 10, y0 - 14), f"{title} ({'higher' if up else 'lower'} is better)", fill=(0, 0, 0))
                ax_x0, ax_x1, ax_y0, ax_y1 = x0 + 40, x0 + panel_w - 10, y0 + 6, y0 + panel_h - 24

                def y_of(value: float, top=top_value, low_y=ax_y1, high_y=ax_y0) -> float:
                    return low_y - min(value, top) / top * (low_y - high_y)

                draw.line([(ax_x0, ax_y0), (ax_x0, ax_y1), (ax_x1, ax_y1)], fill=(0, 0, 0))
                for tick in (0.0, top_value / 2, top_value):
                    draw.line([(ax_x0 - 3, y_of(tick)), (ax_x0, y_of(tick))], fill=(0, 0, 0))
                    draw.text((x0 + 4, y_of(tick) - 6), f"{tick:.3g}", fill=(0, 0, 0))
                group_w = (ax_x1 - ax_x0) / len(groups)
                bar_w = group_w / (len(self.configs) + 1)
                for g, (count, label) in enumerate(groups):
                    gx = ax_x0 + g * group_w + bar_w / 2
                    for k, config in enumerate(self.configs):
                        ci = summaries[(count, config)]
                        if ci.n == 0:
                            continue
                        bx0, bx1 = gx + k * bar_w, gx + (k + 1) * bar_w - 2
                        draw.rectangle([bx0, y_of(ci.mean), bx1, ax_y1], fill=palette[k % len(palette)])
                        cx, lo, hi = (bx0 + bx1) / 2, y_of(ci.low), y_of(ci.high)
                        draw.line([(cx, lo), (cx, hi)], fill=(0, 0, 0))
                        draw.line([(cx - 2, lo), (cx + 2, lo)], fill=(0, 0, 0))
                        draw.line([(cx - 2, hi), (cx + 2, hi)], fill=(0, 0, 0))
                    draw.text((gx, ax_y1 + 4), label, fill=(0, 0, 0))
        x = 10
        for k, config in enumerate(self.configs):
            draw.rectangle([x, 6, x + 12, 18], fill=palette[k % len(palette)])
            draw.text((x + 16, 6), config, fill=(0, 0, 0))
            x += 24 + 7 * len(config)
        return image


def run_synthetic_bench(
    pipe,
    n_edits: int = 200,
    seed: int = 0,
    configs: Sequence[str] = tuple(ABLATION_SWITCHES),
    settings: SyntheticEditSettings = SYNTHETIC_EDIT_SETTINGS,
    progress: bool = True,
    give_masks: bool = False,
    inversion_cache=None,
) -> SyntheticBenchResult:
    """Runs every configuration on ``n_edits`` benchmark edits and scores them.

    Args:
        pipe: an :class:`~aledit.pipeline.EditPipeline` (e.g. ``synthetic-tiny``).
        configs: ALE ablation names (:data:`ABLATION_SWITCHES`) or method names, in table order.
        give_masks: give the exact masks also to methods that only optionally use them.
        inversion_cache: folder for DDIM / null-text inversions shared by the methods.
    """
    for config in configs:
        resolve_config(config)
    cases = bench_cases(n_edits, seed, size=settings.size)
    records = []
    start = time.perf_counter()
    runs = [(case, config) for case in cases for config in configs]
    for case, config in tqdm(runs, desc="synthetic bench", disable=not progress):
        edited = edit_case(pipe, case, config, settings, give_masks, inversion_cache)
        scores = score_edit(case.scene, case.edit, edited, ideal=case.ideal)
        records.append(
            {
                "case": case.index,
                "config": config,
                "edit_type": case.edit_type.value,
                "n_edit": case.n_edit,
                "pairs": [list(p) for p in case.edit.pairs],
                **scores.as_dict(),
            }
        )
    seconds = time.perf_counter() - start
    logger.info("synthetic bench: %d runs in %.0f s", len(records), seconds)
    return SyntheticBenchResult(tuple(records), tuple(configs), settings, seconds, extra={"give_masks": give_masks})


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``synthetic`` to ``subparsers`` (those of ``aledit bench``); the parsed namespace's
    ``run(args)`` runs it and returns an exit code."""
    p = subparsers.add_parser(
        "synthetic",
        help="ALE's ablation or a method comparison on the synthetic world, with exact metrics",
        description="Run ALE ablations (naive, ORE, ORE+RGB-CAM, ORE+BB, ALE) or registered methods (--methods "
        "ale,p2p,masactrl,fpe,infedit,naive) on generated edits of synthetic scenes and write Markdown tables with "
        "95%% bootstrap CIs and a chart.",
    )
    p.add_argument("--edits", type=int, default=200, help="number of edits (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the edits (default 0)")
    p.add_argument("--out", default="synthetic-bench", metavar="DIR", help="output folder (default synthetic-bench)")
    p.add_argument("--model", default=None, help="model folder (default: the packaged synthetic-tiny)")
    p.add_argument("--steps", type=int, default=SYNTHETIC_EDIT_SETTINGS.steps)
    p.add_argument("--eta", type=float, default=SYNTHETIC_EDIT_SETTINGS.eta)
    p.add_argument("--target-guidance", type=float, default=SYNTHETIC_EDIT_SETTINGS.target_guidance)
    p.add_argument(
        "--configs", "--methods", dest="configs", default=",".join(ABLATION_SWITCHES),
        help="comma-separated ALE ablations (" + ", ".join(ABLATION_SWITCHES) + ") and/or methods (ale, p2p, "
        "masactrl, fpe, infedit, ...); default: the ALE ablation",
    )
    p.add_argument("--give-masks", action="store_true", help="give exact masks also to methods that use them optionally")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_run_bench)
    return p


def _run_bench(args) -> int:
    from ..commands import UsageError, check_model_arg, load_pipeline
    from ..io import check_writable_dir, save_image_atomic, save_text_atomic
    from .model import synthetic_model_path

    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    if not configs:
        raise UsageError(f"no configuration in --methods {args.configs!r}")
    try:
        for config in configs:
            resolve_config(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.edits < 1:
        raise UsageError(f"--edits must be >= 1, got {args.edits}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    settings = SYNTHETIC_EDIT_SETTINGS.replace(steps=args.steps, eta=args.eta, target_guidance=args.target_guidance)
    model = args.model or str(synthetic_model_path())
    check_model_arg(model)
    try:
        os.makedirs(args.out, exist_ok=True)
        check_writable_dir(os.path.join(args.out, "synthetic_bench.md"))
    except OSError as exc:
        raise UsageError(f"cannot write to --out folder {args.out}: {exc.strerror or exc}") from None
    pipe = load_pipeline(model, args.device)
    pipe.set_progress_bar_config(disable=True)
    result = run_synthetic_bench(
        pipe, args.edits, args.seed, configs, settings, give_masks=args.give_masks,
        inversion_cache=os.path.join(args.out, "inversions"),
    )
    md_path = os.path.join(args.out, "synthetic_bench.md")
    # Every file is renamed into place, so an interrupted run leaves none half-written.
    save_text_atomic("".join(json.dumps(record) + "\n" for record in result.records), os.path.join(args.out, "records.jsonl"))
    save_text_atomic(result.markdown(), md_path)
    save_image_atomic(result.chart(), os.path.join(args.out, "synthetic_bench.png"))
    print(result.markdown())
    print(f"wrote {md_path}, synthetic_bench.png and records.jsonl to {args.out}")
    return 0
