"""Runs a method over a benchmark: resumable, sharded, one result row per edit.

For each selected edit the runner calls the method, writes the edited image atomically to
``RUN_DIR/images/<method>-<config id>/<edit id>.png``, computes the metrics
(:func:`~aledit.metrics.evaluate_edit` against the benchmark's masks) and inserts the row in one
transaction into this rank's store (:mod:`aledit.bench.store`). Killed at any moment and started
again, it skips every row already done in any rank's store of the run folder and computes the
rest; an edit that raises is stored with its error and the run goes on (``retry_failed`` redoes
those).

Sharding: edits ``limit``-cut first, then shard ``i`` of ``n`` takes every ``n``-th edit
starting at ``i``. Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` in the environment) each process becomes one shard and uses GPU ``LOCAL_RANK``; a
manual ``--shard i/n`` splits further (shard ``i * world + rank`` of ``n * world``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..io import save_image_atomic
from ..metrics import METRIC_KEYS, MetricModels, evaluate_edit, load_eval_mask
from .dataset import BenchEdit, Benchmark
from .methods import BenchMethod
from .store import STATUS_ERROR, STATUS_OK, ResultRow, ResultStore, config_id, read_results, store_path

__all__ = ["RunSummary", "Shard", "parse_shard", "resolve_device", "resolve_shard", "run_benchmark", "select_edits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the edits at positions ``index, index + count, ...``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be in [0, {self.count - 1}] and count >= 1, got {self.index}/{self.count}"
            )

    def select(self, items: Sequence) -> list:
        return list(items[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"1/4"`` -> ``Shard(1, 4)``; ``ValueError`` with the expected form otherwise."""
    index, sep, count = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise ValueError(f"malformed shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None


def resolve_shard(manual: Shard | None = None, env: Mapping[str, str] | None = None) -> tuple[Shard, int]:
    """This process's shard and local rank, from a manual shard and the launcher's environment.

    ``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; each
    process then takes its own shard. Returns ``(shard, local_rank)``.
    """
    env = os.environ if env is None else env
    manual = manual or Shard()
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by accelerate launch or torchrun), got "
            f"{env.get('WORLD_SIZE')!r}, {env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
    return Shard(manual.index * world + rank, manual.count * world), local_rank


def resolve_device(device: str | None, local_rank: int = 0) -> str:
    """``device`` if given, else ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return "cpu"


def select_edits(bench: Benchmark, shard: Shard = Shard(), limit: int | None = None) -> list[BenchEdit]:
    """The edits this shard runs: the first ``limit`` of the benchmark, then every n-th."""
    edits = list(bench.edits if limit is None else bench.edits[:limit])
    return shard.select(edits)


@dataclass(frozen=True)
class RunSummary:
    """What one call of :func:`run_benchmark` did.

    Attributes:
        selected: edits of this shard.
        skipped: already done before this call (not recomputed).
        done: computed successfully now.
        failed: recorded with an error now.
        store: this rank's SQLite file.
        config_id: id of the method's config (names the image folder).
        errors: ``(edit id, error)`` of the edits that failed now.
        evaluated: stored edits without metrics (a run with ``--no-metrics``) whose metrics were
            computed now from their stored images (counted in ``skipped``, not re-edited).
        failed_before: edits of this shard stored with an error by an earlier run (counted in
            ``skipped``; ``retry_failed`` redoes them).
    """

    selected: int
    skipped: int
    done: int
    failed: int
    store: Path
    config_id: str
    errors: tuple[tuple[str, str], ...] = field(default=())
    evaluated: int = 0
    failed_before: int = 0


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def run_benchmark(
    bench: Benchmark,
    method: BenchMethod,
    run_dir: str | os.PathLike,
    *,
    shard: Shard = Shard(),
    limit: int | None = None,
    metric_models: MetricModels | None = None,
    metrics_config: Mapping[str, Any] | None = None,
    mask_provider=None,
    mask_label: str = "bench",
    retry_failed: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Runs ``method`` on this shard's edits of ``bench``, storing results in ``run_dir``.

    Args:
        bench: the benchmark.
        method: a :class:`~aledit.bench.methods.BenchMethod`.
        run_dir: the run folder (created); may already hold results of this or other methods.
        shard, limit: which edits (see :func:`select_edits`).
        metric_models: models for :func:`~aledit.metrics.evaluate_edit`; ``None`` stores no
            metrics (NaN).
        metrics_config: labels of the metric models, stored with each row.
        mask_provider: finds the edit masks at run time (e.g. Grounded-SAM, the paper's
            protocol); ``None`` gives the method the benchmark's masks. Metrics always use the
            benchmark's masks.
        mask_label: recorded in the config as ``"masks"`` (which masks the method saw).
        retry_failed: recompute edits stored with an error.
        progress: show a progress bar with ETA.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**method.config, "masks": mask_label}
    cid = config_id(method.name, config)
    image_dir = Path("images") / f"{method.name}-{cid}"
    (run_dir / image_dir).mkdir(parents=True, exist_ok=True)
    metrics_config = dict(metrics_config or {})
    if metric_models is None:
        metrics_config = {"computed": False}

    edits = select_edits(bench, shard, limit)
    stored = {
        row.edit_id: row
        for row in read_results([run_dir], only_done=True)
        if row.method == method.name and row.config_id == cid
    }
    done_ids = {i for i, row in stored.items() if not (retry_failed and row.status == STATUS_ERROR)}
    todo = [e for e in edits if e.id not in done_ids]
    skipped = len(edits) - len(todo)
    failed_before = sum(1 for e in edits if e.id in done_ids and stored[e.id].status == STATUS_ERROR)
    # Rows stored without metrics (--no-metrics) get them now, from their stored images.
    to_evaluate = (
        [(e, stored[e.id]) for e in edits if e.id in done_ids and _lacks_metrics(stored[e.id])]
        if metric_models is not None
        else []
    )
    path = store_path(run_dir, shard.index)
    logger.info(
        "%s (config %s), shard %s: %d edits, %d already done (%d of them get their metrics now), %d to run; "
        "results in %s",
        method.name,
        cid,
        shard,
        len(edits),
        skipped,
        len(to_evaluate),
        len(todo),
        path,
    )
    context = _RunContext(
        bench=bench,
        method=method,
        config_id=cid,
        config=config,
        run_dir=run_dir,
        image_dir=image_dir,
        metric_models=metric_models,
        metrics_config=metrics_config,
        mask_provider=mask_provider,
        rank=shard.index,
        load_image=functools.lru_cache(maxsize=8)(_load_rgb),  # edits of one image often follow each other
    )
    done = failed = evaluated = 0
    errors: list[tuple[str, str]] = []
    with ResultStore(path) as store, logging_redirect_tqdm():
        bar = tqdm(
            total=len(todo) + len(to_evaluate), desc=f"{method.name} {shard}", unit="edit", disable=not progress,
            dynamic_ncols=True,
        )
        for edit, row in to_evaluate:
            row = _evaluate_stored(context, edit, row)
            store.add(row)
            if row.status == STATUS_OK:
                evaluated += 1
            else:
                failed += 1
                errors.append((edit.id, row.error or ""))
                logger.warning("metrics of stored edit %s failed (recorded): %s", edit.id, row.error)
            bar.update(1)
        for edit in todo:
            row = _run_one(context, edit)
            store.add(row)  # after the image is in place: a stored row always has its image
            if row.status == STATUS_OK:
                done += 1
            else:
                failed += 1
                errors.append((edit.id, row.error or ""))
                logger.warning("edit %s failed (recorded, run goes on): %s", edit.id, row.error)
                bar.set_postfix(failed=failed)
            bar.update(1)
        bar.close()
    return RunSummary(len(edits), skipped, done, failed, path, cid, tuple(errors), evaluated, failed_before)


def _lacks_metrics(row: ResultRow) -> bool:
    """An ``ok`` row stored without metrics (``metrics_config`` ``{"computed": false}``)."""
    return row.status == STATUS_OK and row.metrics_config.get("computed") is False


def _evaluate_stored(ctx: _RunContext, edit: BenchEdit, row: ResultRow) -> ResultRow:
    """``row`` with the metrics of its stored image (``row.output``, absolute); no re-edit."""
    import dataclasses

    base = dataclasses.replace(row, output=Path(row.output).relative_to(ctx.run_dir.resolve()).as_posix(), rank=ctx.rank)
    try:
        source = ctx.load_image(str(ctx.bench.images[edit.image]))
        edited = _load_rgb(row.output)
        masks = [load_eval_mask(p) for p in ctx.bench.mask_paths(edit).values()]
        metrics = evaluate_edit(source, edited, masks, list(edit.sources), list(edit.targets), ctx.metric_models)
    except Exception as exc:  # recorded like a metrics failure of a fresh edit
        logger.debug("metrics of %s failed", edit.id, exc_info=True)
        return dataclasses.replace(
            base, status=STATUS_ERROR, error="metrics: " + _error_text(exc), created_at=_now()
        )
    return dataclasses.replace(base, metrics=metrics, metrics_config=ctx.metrics_config, created_at=_now())


@dataclass(frozen=True)
class _RunContext:
    """What every edit of one :func:`run_benchmark` call shares."""

    bench: Benchmark
    method: BenchMethod
    config_id: str
    config: Mapping[str, Any]
    run_dir: Path
    image_dir: Path
    metric_models: MetricModels | None
    metrics_config: Mapping[str, Any]
    mask_provider: Any
    rank: int
    load_image: Callable[[str], Image.Image]


def _file_stem(edit_id: str) -> str:
    """The edit id if it is a safe file name, else a cleaned one made unique by a short hash."""
    safe = "".join(c if c.isalnum() or c in "+-_. " else "_" for c in edit_id).strip(" .")
    if safe == edit_id and safe:
        return safe
    return f"{safe[:80]}-{hashlib.sha1(edit_id.encode()).hexdigest()[:8]}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _run_one(ctx: _RunContext, edit: BenchEdit) -> ResultRow:
    """Edits, saves the image atomically, evaluates; returns the row to insert."""
    base = {
        "edit_id": edit.id,
        "method": ctx.method.name,
        "config_id": ctx.config_id,
        "config": ctx.config,
        "image": edit.image,
        "edit_type": edit.edit_type.value,
        "num_objects": edit.num_objects,
        "pairs": edit.pairs,
        "seed": edit.seed,
        "bench": str(Path(ctx.bench.root).resolve()),
        "metrics_config": ctx.metrics_config,
        "rank": ctx.rank,
    }

    mask_paths = ctx.bench.mask_paths(edit)
    started = time.perf_counter()
    try:
        source = ctx.load_image(str(ctx.bench.images[edit.image]))
        masks = ctx.mask_provider if ctx.mask_provider is not None else {s: str(p) for s, p in mask_paths.items()}
        edited = ctx.method(source, edit.edits, masks, edit.seed)
        if not isinstance(edited, Image.Image):
            raise TypeError(f"method {ctx.method.name!r} returned {type(edited).__name__}, not a PIL image")
        edited = edited.convert("RGB")
    except Exception as exc:  # any failure of one edit is recorded; the run goes on
        logger.debug("edit %s failed", edit.id, exc_info=True)
        return ResultRow(
            **base,
            status=STATUS_ERROR,
            error=_error_text(exc),
            seconds=time.perf_counter() - started,
            created_at=_now(),
        )
    seconds = time.perf_counter() - started

    output = ctx.image_dir / f"{_file_stem(edit.id)}.png"
    save_image_atomic(edited, ctx.run_dir / output)  # image first, then the row: a row always has its image

    metrics = {k: float("nan") for k in METRIC_KEYS}
    if ctx.metric_models is not None:
        try:
            masks = [load_eval_mask(p) for p in mask_paths.values()]
            metrics = evaluate_edit(source, edited, masks, list(edit.sources), list(edit.targets), ctx.metric_models)
        except Exception as exc:
            logger.debug("metrics of %s failed", edit.id, exc_info=True)
            return ResultRow(
                **base,
                status=STATUS_ERROR,
                error="metrics: " + _error_text(exc),
                output=output.as_posix(),
                seconds=seconds,
                created_at=_now(),
            )
    return ResultRow(
        **base, status=STATUS_OK, output=output.as_posix(), metrics=metrics, seconds=seconds, created_at=_now()
    )
