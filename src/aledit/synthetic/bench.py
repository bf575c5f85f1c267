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

Tables (Markdown, from pandas DataFrames grouped by configuration, object count and edit
type) give the mean of each score and its 95% confidence interval from a percentile bootstrap
over edits (:func:`aledit.reporting.mean_ci`: ``scipy.stats.bootstrap``, 2,000 resamples, seed
0; NaN scores, e.g. TI leakage of one-object edits, are left out and ``n`` says how many
remained). Every configuration sees the same edits, so differences between rows are paired;
:func:`paired_difference_ci` gives the CI of a difference. The chart (matplotlib) shows the same
means and intervals as grouped bars.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..edits import EditType
from ..reporting import (
    N_RESAMPLES,
    SEED,
    MeanCI,
    Metric,
    grouped_bar_chart,
    mean_ci,
    paired_difference_ci,
    summarize,
    to_markdown,
)
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
# ALE as the authors' code does it, docs/ale_presets.md; DPL without NTI, and with no token
# learning, i.e. P2P with DPL's edit settings).
# BindEdit (docs/bindedit.md): default = binding only; "all" = the three terms; the ablation
# takes one term off "all" at a time; "off" = the plain dual-branch edit; "bb" adds ALE's
# background blending to the default.
METHOD_VARIANTS: dict[str, tuple[str, dict]] = {
    "p2p-ddim": ("p2p", {"null_text": False}),
    "ale-authors": ("ale", {"preset": "authors"}),
    "bindedit-all": ("bindedit", {"binding": True, "rebalance": True, "fidelity": True}),
    "bindedit-no-binding": ("bindedit", {"binding": False, "rebalance": True, "fidelity": True}),
    "bindedit-no-rebalance": ("bindedit", {"binding": True, "rebalance": False, "fidelity": True}),
    "bindedit-no-fidelity": ("bindedit", {"binding": True, "rebalance": True, "fidelity": False}),
    "bindedit-off": ("bindedit", {"binding": False, "rebalance": False, "fidelity": False}),
    "bindedit-bb": ("bindedit", {"background_blend": True}),
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
    """A Markdown table: one header row, then ``rows`` (cells already formatted), via a DataFrame."""
    return to_markdown(pd.DataFrame([list(r) for r in rows], columns=list(header)))


def _titles(keys: Sequence[tuple[str, str, bool]]) -> list[str]:
    return [f"{title} {'↑' if up else '↓'}" for _, title, up in keys]


def _ci_cells(summary: pd.DataFrame, key: str, digits: int = 3) -> list[str]:
    """``mean [low, high]`` (or ``n/a``) per row of a :func:`~aledit.reporting.summarize` frame."""
    return [
        MeanCI(row[key], row[f"{key}_low"], row[f"{key}_high"], int(row[f"{key}_n"])).format(digits)
        for _, row in summary.iterrows()
    ]


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

    @classmethod
    def from_records(
        cls, records: Sequence[dict], order: Sequence[str] | None = None, first: int | None = None, **kwargs
    ) -> SyntheticBenchResult:
        """The result of stored records (``records.jsonl`` lines of one or more runs on the same
        edits): configurations in ``order`` (default: as first seen), only cases ``< first``
        when given. ``ValueError`` when a configuration has no records or the configurations did
        not score the same cases (runs with different ``--edits`` or ``--seed``)."""
        records = [r for r in records if first is None or r["case"] < first]
        found = list(dict.fromkeys(r["config"] for r in records))
        order = list(order) if order else found
        missing = [c for c in order if c not in found]
        if missing:
            raise ValueError(f"no records of {', '.join(missing)} (found: {', '.join(found)})")
        cases = {c: sorted(r["case"] for r in records if r["config"] == c) for c in order}
        if len({tuple(v) for v in cases.values()}) != 1:
            counts = ", ".join(f"{c}: {len(v)}" for c, v in cases.items())
            raise ValueError(
                f"the configurations did not score the same edits ({counts} cases); merge runs with the same "
                "--edits and --seed, or keep the cases all of them ran with --first N"
            )
        return cls(tuple(r for r in records if r["config"] in order), tuple(order), **kwargs)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """The records of :attr:`configs` as a DataFrame in case order; ``config`` and
        ``edit_type`` are categorical (table order, :data:`EDIT_TYPES` order), so groups sort
        that way. Case order matters: the bootstrap resamples positions."""
        frame = pd.DataFrame(list(self.records))
        frame = frame[frame["config"].isin(self.configs)].sort_values("case", kind="stable", ignore_index=True)
        types = [t.value for t in EDIT_TYPES]
        types += sorted(set(frame["edit_type"]) - set(types))
        return frame.assign(
            config=pd.Categorical(frame["config"], categories=list(self.configs)),
            edit_type=pd.Categorical(frame["edit_type"], categories=types),
        )

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
        summary = summarize(self.frame, ["config"], [k for k, _, _ in keys])
        table = pd.DataFrame({"config": summary["config"].astype(str)})
        for (key, _, _), title in zip(keys, _titles(keys)):
            table[title] = _ci_cells(summary, key)
        return to_markdown(table)

    def object_count_table(self, keys: Sequence[tuple[str, str, bool]] = SCORE_KEYS[:4]) -> str:
        """Markdown: one row per (number of edited objects, configuration)."""
        summary = summarize(self.frame, ["n_edit", "config"], [k for k, _, _ in keys])
        table = pd.DataFrame(
            {"objects": summary["n_edit"], "config": summary["config"].astype(str), "n": summary["size"]}
        )
        for (key, _, _), title in zip(keys, _titles(keys)):
            table[title] = _ci_cells(summary, key)
        return to_markdown(table)

    def edit_type_table(self, key: str = "success") -> str:
        """Markdown: ``key`` per edit type (rows) and configuration (columns)."""
        summary = summarize(self.frame, ["edit_type", "config"], [key])
        cells = summary.assign(cell=_ci_cells(summary, key, 2), config=summary["config"].astype(str))
        table = cells.pivot(index="edit_type", columns="config", values="cell")
        types = list(dict.fromkeys(summary["edit_type"]))  # EDIT_TYPES order (the groups' order)
        table = table.reindex(index=types, columns=list(self.configs)).fillna("n/a")
        return to_markdown(table.rename_axis(index="edit type", columns=None).reset_index())

    def difference_table(self, reference: str | None = None, keys=SCORE_KEYS[:4]) -> str:
        """Markdown: paired difference (config minus ``reference``, default ``naive`` when run,
        else the first configuration) with its 95% CI, over the edits both scored."""
        reference = reference or ("naive" if "naive" in self.configs else self.configs[0])
        frame = self.frame.assign(config=self.frame["config"].astype(str))
        others = [c for c in self.configs if c != reference]
        table = pd.DataFrame({f"config − {reference}": others})
        for key, title, _ in keys:
            wide = frame.pivot(index="case", columns="config", values=key).sort_index()
            table[f"Δ {title}"] = [paired_difference_ci(wide[c], wide[reference]).format() for c in others]
        return to_markdown(table)

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
                "(`aledit.synthetic.score_edit`); mean [95% percentile-bootstrap CI: `scipy.stats.bootstrap`, "
                f"{N_RESAMPLES:,} resamples, seed {SEED}]. "
                f"Engine: steps {s.steps}, eta {s.eta}, target guidance {s.target_guidance}, "
                f"source guidance {s.source_guidance}, size {s.size}, "
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
        """Grouped bars (matplotlib): one panel per score (success, TI leakage, TE changed), on
        its x axis all edits and each number of edited objects, one bar per configuration with
        its 95% CI and its mean written above; ``n/a`` where a score does not apply (TI leakage
        of one object)."""
        keys = SCORE_KEYS[:3]
        names = [k for k, _, _ in keys]
        frame = self.frame
        overall = summarize(frame.assign(group="all edits"), ["group", "config"], names)
        by_count = summarize(frame, ["n_edit", "config"], names)
        by_count.insert(0, "group", [f"{c} obj" for c in by_count["n_edit"]])
        summary = pd.concat([overall, by_count.drop(columns="n_edit")], ignore_index=True)
        summary["config"] = summary["config"].astype(str)
        return grouped_bar_chart(
            summary,
            [Metric(key, title, up, 3) for key, title, up in keys],
            group="group",
            series="config",
            title=f"Synthetic benchmark, {self.n_cases} edits: mean and 95% bootstrap CI",
        )


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
        "--source-guidance", type=float, default=SYNTHETIC_EDIT_SETTINGS.source_guidance,
        help="guidance of the source branch of the virtual-inversion methods (ale, infedit; default "
        f"{SYNTHETIC_EDIT_SETTINGS.source_guidance:g})",
    )
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
    from ..io import OutputsInterrupted, check_output_dir, output_dir, save_outputs
    from .model import synthetic_model_path

    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    if not configs:
        raise UsageError(f"no configuration in --methods {args.configs!r}")
    try:
        for config in configs:
            resolve_config(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = SYNTHETIC_EDIT_SETTINGS.replace(
        steps=args.steps, eta=args.eta, target_guidance=args.target_guidance, source_guidance=args.source_guidance
    )
    model = args.model or str(synthetic_model_path())
    check_model_arg(model)
    try:
        check_output_dir(args.out)
    except OSError as exc:
        raise UsageError(f"cannot write to --out folder {args.out}: {exc}") from None
    with output_dir(args.out):
        pipe = load_pipeline(model, args.device)
        pipe.set_progress_bar_config(disable=True)
        result = run_synthetic_bench(
            pipe, args.edits, args.seed, configs, settings, give_masks=args.give_masks,
            inversion_cache=os.path.join(args.out, "inversions"),
        )
        md_path = os.path.join(args.out, "synthetic_bench.md")
        # Every file is renamed into place, so an interrupted run leaves none half-written.
        written = save_outputs([
            ("".join(json.dumps(record) + "\n" for record in result.records), os.path.join(args.out, "records.jsonl")),
            (result.markdown(), md_path),
            (result.chart(), os.path.join(args.out, "synthetic_bench.png")),
        ])
    try:
        print(result.markdown())
        print(f"wrote {md_path}, synthetic_bench.png and records.jsonl to {args.out}")
    except KeyboardInterrupt:
        raise OutputsInterrupted(written) from None
    return 0
