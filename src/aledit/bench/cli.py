"""``aledit bench generate | run | report``: :func:`register` adds them to the ``aledit`` parser.

Same conventions as :mod:`aledit.cli`: a user mistake raises :class:`aledit.cli.UsageError`
(one line ``aledit: error: ...``, exit 2), each subcommand sets ``run``. ``python -m aledit.bench``
runs these commands on their own.

Multi-GPU / multi-node: start the same ``run`` command under ``accelerate launch`` (or
``torchrun``); every process reads its rank from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``,
takes its own shard, runs on GPU ``LOCAL_RANK`` and writes ``results-rank{r}.sqlite``::

    accelerate launch --multi_gpu --num_processes 8 -m aledit.bench run ale-bench --out runs/ale
    torchrun --nproc_per_node 8 -m aledit.bench run ale-bench --out runs/ale

(``--num_machines`` / ``--nnodes`` with a shared ``--out`` folder for several nodes; or
``--shard i/n`` by hand on each machine.) ``aledit bench report runs/ale`` merges the ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from ..commands import UsageError

__all__ = ["main", "register"]

logger = logging.getLogger("aledit")

ALE_BENCH = "ale-bench"


def register(subparsers) -> None:
    """Adds ``bench`` with its subcommands to an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "bench",
        help="ALE-Bench: generate a benchmark, run a method on it, report the results",
        description="Generate ALE-Bench-style benchmarks, run editing methods on them (resumable, sharded) "
        "and report the paper's tables.",
    )
    _add_subcommands(p)


def _add_subcommands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")
    sub.required = True
    _add_generate_parser(sub)
    _add_run_parser(sub)
    _add_report_parser(sub)
    from ..synthetic.bench import register as register_synthetic  # lazy: imports UsageError from aledit.cli

    register_synthetic(sub)


# -- generate --------------------------------------------------------------------------------


def _add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="draw a benchmark's edits from object lists and attribute dictionaries",
        description="Draw INSTANCES random edits per image, edit type (color, object, material, color+object, "
        "object+material) and object count (1..MAX_OBJECTS) from the templates of ALE-Bench, and write a "
        "self-contained benchmark folder (images, masks, edits.jsonl, objects.json).",
    )
    p.add_argument("out", help="new benchmark folder to write (must not exist or be empty)")
    p.add_argument(
        "--objects",
        required=True,
        metavar="JSON|BENCH",
        help="objects file (per-image object lists and attribute dictionaries), or a benchmark folder / "
        "'ale-bench' to derive them from its edits",
    )
    p.add_argument(
        "--images", default=None, metavar="DIR", help="folder with <image>.jpg|png (default: the --objects benchmark's)"
    )
    p.add_argument(
        "--masks",
        default=None,
        metavar="DIR",
        help="folder with <image>/<object>_mask.png (default: the --objects benchmark's)",
    )
    p.add_argument("--instances", type=int, default=10, help="edits per image, type and object count (default 10)")
    p.add_argument("--max-objects", type=int, default=3, help="largest number of objects edited at once (default 3)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument(
        "--edit-seed", type=int, default=42, help="noise seed written into each edit (default 42, the authors')"
    )
    p.set_defaults(run=_run_generate)


def _load_bench_arg(value: str):
    from .dataset import BenchFormatError, load_ale_bench, load_benchmark

    try:
        return load_ale_bench() if value == ALE_BENCH else load_benchmark(value)
    except BenchFormatError as exc:
        raise UsageError(str(exc)) from None


def _run_generate(args) -> int:
    from ..io import check_output_dir
    from ..edits import EditType
    from .dataset import MASK_SUFFIX, BenchFormatError, find_image, write_benchmark
    from .generate import derive_object_lists, generate_edits, read_objects_json

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty folder; choose a new output folder")
    try:
        check_output_dir(out, "bench generate OUT")
    except OSError as exc:
        raise UsageError(str(exc)) from None

    images_dir, masks_dir = args.images, args.masks
    if args.objects == ALE_BENCH or os.path.isdir(args.objects):
        source = _load_bench_arg(args.objects)
        try:
            objects = derive_object_lists(source)
        except BenchFormatError as exc:
            raise UsageError(str(exc)) from None
        images_dir = images_dir or source.root / "images"
        masks_dir = masks_dir or source.root / "masks"
    elif os.path.isfile(args.objects):
        try:
            objects = read_objects_json(args.objects)
        except BenchFormatError as exc:
            raise UsageError(str(exc)) from None
        if not images_dir or not masks_dir:
            raise UsageError("--images DIR and --masks DIR are required with an objects file")
    else:
        raise UsageError(f"--objects {args.objects!r} is neither a file, a benchmark folder nor 'ale-bench'")
    for flag, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if not os.path.isdir(folder):
            raise UsageError(f"{flag} folder not found: {folder}")

    image_files, mask_files = {}, {}
    for spec in objects:
        found = find_image(images_dir, spec.image)
        if found is None:
            raise UsageError(f"no image {spec.image!r} in {images_dir} (looked for {spec.image}.jpg/.jpeg/.png/.webp)")
        image_files[spec.image] = found
        mask_files[spec.image] = {}
        for obj in spec.objects:
            mask = Path(masks_dir) / spec.image / f"{obj.name}{MASK_SUFFIX}"
            if not mask.is_file():
                raise UsageError(f"no mask for object {obj.name!r} of {spec.image!r}: expected {mask}")
            mask_files[spec.image][obj.name] = mask

    edits = generate_edits(
        objects, instances=args.instances, max_objects=args.max_objects, seed=args.seed, edit_seed=args.edit_seed
    )
    if not edits:
        raise UsageError("no edit can be drawn: give the objects colors, new_objects or materials")
    objects_json = {"images": {s.image: [o.to_json() for o in s.objects] for s in objects}}
    try:
        bench = write_benchmark(
            out,
            edits,
            image_files,
            mask_files,
            extra_files={"objects.json": (json.dumps(objects_json, indent=1, ensure_ascii=False) + "\n").encode()},
        )
    except (FileExistsError, BenchFormatError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"could not write {out}: {exc.strerror or exc}") from None
    counts = Counter((e.edit_type, e.num_objects) for e in bench.edits)
    print(f"wrote {len(bench.edits)} edits for {len(objects)} images to {out}")
    for edit_type in EditType:
        per_count = ", ".join(f"{n} object(s): {counts[(edit_type, n)]}" for n in range(1, args.max_objects + 1))
        print(f"  {edit_type.value:<16} {per_count}")
    return 0


# -- run -------------------------------------------------------------------------------------


def _add_run_parser(sub) -> None:
    from ..commands import add_method_options, add_provider_options

    p = sub.add_parser(
        "run",
        help="run an editing method on a benchmark (resumable, sharded)",
        description="Edit every benchmark edit of this shard with METHOD, store each result (image + one SQLite "
        "row with metrics) in RUN_DIR. Killed and started again, it recomputes nothing stored. Under accelerate "
        "launch / torchrun each process takes its own shard.",
    )
    p.add_argument("bench", help="benchmark folder, or 'ale-bench' for the copy shipped with aledit")
    add_method_options(p)
    p.add_argument(
        "--model",
        default=None,
        help="hub id or local folder (default: the method's, SimianLuo/LCM_Dreamshaper_v7 for ale); "
        "'tiny-random' runs offline",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: results-rank*.sqlite and images/")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N edits of the benchmark")
    p.add_argument("--shard", default=None, metavar="I/N", help="run shard I of N (0-based), e.g. 0/4")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's, ale 15)")
    p.add_argument("--size", type=int, default=None, help="working resolution, multiple of 8 (default: the method's, ale 768)")
    p.add_argument("--device", default=None, help="torch device (default cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument(
        "--inversion-cache", default=None, metavar="DIR",
        help="keep DDIM / null-text inversions here, so methods run on the same images invert once "
        "(default RUN_DIR/inversions)",
    )
    p.add_argument(
        "--give-masks", action="store_true",
        help="also give the masks to methods that use them only optionally (p2p/infedit local blend, masactrl "
        "mask-guided); by default, as in the ALE paper's Table 1, they find regions from attention",
    )
    p.add_argument(
        "--clip",
        default=None,
        metavar="ID|PATH",
        help="CLIP model of the metrics (default openai/clip-vit-large-patch14)",
    )
    p.add_argument(
        "--dino",
        default=None,
        metavar="ID|PATH",
        help="DINO model of the structure distance (default facebook/dino-vitb8)",
    )
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (reported as NaN)")
    p.add_argument(
        "--pie-bench-resize", action="store_true",
        help="structure distance: resize for DINO without antialiasing, as PIE-Bench's torchvision 0.13 "
        "(default: antialiased, as torchvision >= 0.17 and the ALE authors)",
    )
    p.add_argument("--no-metrics", action="store_true", help="store edited images only, no metrics")
    p.add_argument("--retry-failed", action="store_true", help="recompute edits stored with an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--find-masks",
        action="store_true",
        help="give the method masks found at run time with --mask-provider (the paper's protocol) instead of the "
        "benchmark's; metrics always use the benchmark's masks",
    )
    add_provider_options(p, "--mask-provider")
    p.set_defaults(run=_run_run)


def _load_metric_models(args, device: str):
    from ..metrics import DEFAULT_CLIP, DEFAULT_DINO, MetricModels
    from ..metrics.background import load_lpips
    from ..metrics.clip_score import load_clip
    from ..metrics.inputs import MetricUnavailable
    from ..metrics.structure import load_dino
    from ..commands import first_line as _first_line

    clip_id, dino_id = args.clip or DEFAULT_CLIP, args.dino or DEFAULT_DINO
    models = {}
    from ..commands import check_hub_model

    for what, flag, ident, load in (("CLIP", "--clip", clip_id, load_clip), ("DINO", "--dino", dino_id, load_dino)):
        check_hub_model(ident, flag, f"pass {flag} with a local folder, or --no-metrics", ("config.json",))
        logger.info("loading %s model %s", what, ident)
        try:
            models[what] = load(ident, device)
        except Exception as exc:  # hub id, network or folder: the user's argument  # noqa: BLE001
            raise UsageError(
                f"could not load {what} model {ident!r} ({_first_line(exc)}); "
                f"pass {flag} with a local folder, or --no-metrics"
            ) from None
    if args.no_lpips:
        lpips = MetricUnavailable("bg_lpips", "LPIPS skipped (--no-lpips)")
    else:
        lpips = load_lpips("squeeze", device)
    lpips_label = lpips.reason if isinstance(lpips, MetricUnavailable) else "squeeze"
    config = {"clip": str(clip_id), "dino": str(dino_id), "lpips": lpips_label}
    antialias = not getattr(args, "pie_bench_resize", False)
    if not antialias:
        config["structure_resize"] = "no antialias (PIE-Bench)"
    models = MetricModels(
        clip=models["CLIP"], dino=models["DINO"], lpips=lpips, device=device, structure_antialias=antialias
    )
    return models, config


def _run_run(args) -> int:
    from ..io import check_output_dir, output_dir
    from .runner import parse_shard, resolve_device, resolve_shard
    from .store import StoreError, read_results

    # Everything that needs no model first, so mistakes fail fast.
    try:
        manual = parse_shard(args.shard) if args.shard is not None else None
        shard, local_rank = resolve_shard(manual)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from ..commands import method_from_args
    from ..methods.registry import available_methods as editing_methods

    if args.method in editing_methods():
        method_name, options = method_from_args(args)
    else:  # a bench-only method: its factory checks its options
        method_name, options = args.method, {}
    bench = _load_bench_arg(args.bench)
    try:
        check_output_dir(args.out)
        if args.inversion_cache:
            check_output_dir(args.inversion_cache, "--inversion-cache")
    except OSError as exc:
        raise UsageError(str(exc)) from None
    try:
        read_results([args.out], only_done=False)  # the run folder's stores must be readable
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if method_name in editing_methods():
        from ..commands import check_hub_model, check_model_arg
        from ..methods.registry import method_info

        model = args.model or method_info(method_name).default_model
        check_model_arg(model)
        check_hub_model(model)
    device = resolve_device(args.device, local_rank)
    with output_dir(args.out):
        summary, method = _run_in(args, bench, method_name, options, shard, device)
    print(
        f"{method.name} shard {shard}: {summary.selected} edits, {summary.skipped} already done, "
        f"{summary.done} done now, {summary.failed} failed"
        + (f", metrics computed for {summary.evaluated} stored edits" if summary.evaluated else "")
        + f"; results in {summary.store}"
    )
    failed = summary.failed + summary.failed_before
    if failed:
        first = f" (first: {summary.errors[0][0]}: {summary.errors[0][1]})" if summary.errors else ""
        print(
            f"aledit: error: {failed} of {summary.selected} edits failed{first}; they are stored with their error "
            f"(see 'aledit bench report {args.out}'); add --retry-failed to the same command to redo them",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_in(args, bench, method_name, options, shard, device):
    """Loads the models and runs; inside the run folder's :func:`~aledit.io.output_dir`."""
    from .methods import MethodSettings, MethodSetupError, build_method
    from .runner import run_benchmark

    metric_models, metrics_config = (None, None) if args.no_metrics else _load_metric_models(args, device)
    settings = MethodSettings(
        model=args.model, steps=args.steps, size=args.size, device=device, options=options,
        inversion_cache=args.inversion_cache or str(Path(args.out) / "inversions"),
        give_masks=args.give_masks,
    )
    try:
        method = build_method(method_name, settings)
    except MethodSetupError as exc:
        raise UsageError(str(exc)) from None
    provider, mask_label = None, "bench"
    if args.find_masks:
        from ..commands import mask_provider

        args.device = device
        provider, mask_label = mask_provider(args), args.provider or "grounded-sam"

    try:
        summary = run_benchmark(
            bench,
            method,
            args.out,
            shard=shard,
            limit=args.limit,
            metric_models=metric_models,
            metrics_config=metrics_config,
            mask_provider=provider,
            mask_label=mask_label,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        from ..commands import Interrupted

        raise Interrupted(
            f"aledit: interrupted; finished results are kept in {args.out}; run the same command again to resume"
        ) from None
    return summary, method


# -- report ----------------------------------------------------------------------------------


def _add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="tables, bar chart and gallery of benchmark runs",
        description="Merge the results of every rank of RUN_DIR(s) and write the paper's tables (by method, edit "
        "type, object count) as Markdown and CSV, a bar chart of the metrics and optionally a gallery.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) of aledit bench run")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default RUN_DIR/report with one RUN_DIR)"
    )
    p.add_argument(
        "--gallery",
        default=None,
        metavar="ID,ID,...",
        help="edit ids to show side by side (source, masks, each method)",
    )
    p.add_argument(
        "--bench",
        default=None,
        help="benchmark folder of the sources for the gallery (default: the one each run recorded)",
    )
    p.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from ..commands import Interrupted
    from ..io import check_output_dir, output_dir
    from .report import ReportError, write_report
    from .store import StoreError

    if args.out is None:
        if len(args.run_dirs) > 1:
            raise UsageError("several RUN_DIRs: say where the report goes with --out DIR")
        args.out = os.path.join(args.run_dirs[0], "report")
    gallery = [g.strip() for g in (args.gallery or "").split(",") if g.strip()]
    bench_root = None
    if args.bench is not None:
        bench_root = _load_bench_arg(args.bench).root
    try:
        check_output_dir(args.out)
        with output_dir(args.out):
            files = write_report(args.run_dirs, args.out, gallery=gallery, bench_root=bench_root)
    except (ReportError, StoreError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"could not write the report to {args.out}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"aledit: interrupted; the report in {args.out} may be incomplete; run the same command again"
        ) from None
    written = [files.markdown, *files.tables, files.rows, files.chart] + ([files.gallery] if files.gallery else [])
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


# -- python -m aledit.bench ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m aledit.bench`` (= ``aledit bench``): generate, run, report."""
    parser = argparse.ArgumentParser(prog="aledit bench", description="ALE-Bench commands of aledit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    _add_subcommands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..commands import run_parser

    return run_parser(None, argv, build=build_parser)
