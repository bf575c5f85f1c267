"""The result store of a benchmark run: one SQLite file per rank in the run folder.

``RUN_DIR/results-rank{r}.sqlite`` holds one row per (edit, method, config); the edited image is
``RUN_DIR/<row.output>``. A row is *done* when it is stored and, for a successful edit, its image
exists. Writes are crash-safe: the image is renamed into place first, then the row is inserted
in one transaction, so a process killed at any moment leaves either a complete row or none.
Each rank writes only its own file; every file can be read while others write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import METRIC_KEYS

__all__ = [
    "ResultRow",
    "ResultStore",
    "StoreError",
    "config_id",
    "read_results",
    "store_files",
    "store_path",
]

SCHEMA_VERSION = 1
STATUS_OK = "ok"
STATUS_ERROR = "error"

_COLUMNS = (
    ("edit_id", "TEXT NOT NULL"),
    ("method", "TEXT NOT NULL"),
    ("config_id", "TEXT NOT NULL"),
    ("config", "TEXT NOT NULL"),
    ("image", "TEXT NOT NULL"),
    ("edit_type", "TEXT NOT NULL"),
    ("num_objects", "INTEGER NOT NULL"),
    ("pairs", "TEXT NOT NULL"),
    ("seed", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("error", "TEXT"),
    ("output", "TEXT"),
    ("bench", "TEXT"),
    ("metrics_config", "TEXT"),
    ("seconds", "REAL"),
    ("rank", "INTEGER"),
    ("created_at", "TEXT NOT NULL"),
    *((key, "REAL") for key in METRIC_KEYS),
)


class StoreError(ValueError):
    """A results file that cannot be read (not an SQLite file, another program's database)."""


def config_id(method: str, config: Mapping[str, Any]) -> str:
    """A short stable id of ``(method, config)``: 12 hex digits of the canonical JSON's SHA-1."""
    text = json.dumps({"method": method, "config": config}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def store_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / f"results-rank{rank}.sqlite"


def store_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every rank's store in ``run_dir``, sorted by rank."""

    def rank_of(p: Path) -> int:
        digits = p.stem[len("results-rank") :]
        return int(digits) if digits.isdigit() else 1 << 30

    return sorted(Path(run_dir).glob("results-rank*.sqlite"), key=rank_of)


@dataclass(frozen=True)
class ResultRow:
    """One stored result.

    Attributes:
        edit_id, method, config_id: the key; ``config`` is the method's settings.
        image, edit_type, num_objects, pairs, seed: the edit, copied so reports need no benchmark.
        status: ``"ok"`` or ``"error"`` (then ``error`` says why and ``output`` may be ``None``).
        output: the edited image's path relative to the run folder.
        bench: the benchmark folder the edit came from.
        metrics: every :data:`~aledit.metrics.METRIC_KEYS` value (NaN when not computed).
        metrics_config: which metric models were used.
        seconds: wall time of the edit alone.
    """

    edit_id: str
    method: str
    config_id: str
    config: Mapping[str, Any]
    image: str
    edit_type: str
    num_objects: int
    pairs: tuple[tuple[str, str], ...]
    seed: int
    status: str
    error: str | None = None
    output: str | None = None
    bench: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    metrics_config: Mapping[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    rank: int = 0
    created_at: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.edit_id, self.method, self.config_id)

    def metric(self, key: str) -> float:
        value = self.metrics.get(key)
        return math.nan if value is None else float(value)

    def _values(self) -> tuple:
        return (
            self.edit_id,
            self.method,
            self.config_id,
            json.dumps(self.config, sort_keys=True, default=str),
            self.image,
            self.edit_type,
            self.num_objects,
            json.dumps([list(p) for p in self.pairs]),
            self.seed,
            self.status,
            self.error,
            self.output,
            self.bench,
            json.dumps(self.metrics_config, sort_keys=True),
            self.seconds,
            self.rank,
            self.created_at,
            # SQLite stores NaN as NULL; read back as NaN.
            *(None if (v := self.metrics.get(k)) is None or math.isnan(v) else float(v) for k in METRIC_KEYS),
        )

    @classmethod
    def _from_sql(cls, row: sqlite3.Row) -> ResultRow:
        return cls(
            edit_id=row["edit_id"],
            method=row["method"],
            config_id=row["config_id"],
            config=json.loads(row["config"]),
            image=row["image"],
            edit_type=row["edit_type"],
            num_objects=row["num_objects"],
            pairs=tuple((s, t) for s, t in json.loads(row["pairs"])),
            seed=row["seed"],
            status=row["status"],
            error=row["error"],
            output=row["output"],
            bench=row["bench"],
            metrics={k: (math.nan if row[k] is None else float(row[k])) for k in METRIC_KEYS},
            metrics_config=json.loads(row["metrics_config"] or "{}"),
            seconds=row["seconds"],
            rank=row["rank"] or 0,
            created_at=row["created_at"],
        )


class ResultStore:
    """One rank's SQLite file: :meth:`add` inserts (or replaces) a row in one transaction."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False):
        """``readonly`` opens an existing file without creating tables. (It still opens it for
        writing when it can, so SQLite can roll back a transaction left by a killed writer.)"""
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.row_factory = sqlite3.Row
        if not readonly:
            self._db.execute("PRAGMA synchronous=FULL")
            self._create()

    def _create(self) -> None:
        columns = ", ".join(f'"{name}" {kind}' for name, kind in _COLUMNS)
        with self._db:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS results ({columns}, PRIMARY KEY (edit_id, method, config_id))"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def add(self, row: ResultRow) -> None:
        names = ", ".join(f'"{name}"' for name, _ in _COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._db:  # one transaction: committed whole or not at all
            self._db.execute(f"INSERT OR REPLACE INTO results ({names}) VALUES ({marks})", row._values())

    def rows(self) -> list[ResultRow]:
        try:
            return [ResultRow._from_sql(r) for r in self._db.execute("SELECT * FROM results ORDER BY rowid")]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a rank that had not written yet
                return []
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_done(row: ResultRow, run_dir: Path) -> bool:
    return row.status == STATUS_ERROR or (row.output is not None and (run_dir / row.output).is_file())


def read_results(run_dirs: Iterable[str | os.PathLike], only_done: bool = True) -> list[ResultRow]:
    """Every row of every rank's store in ``run_dirs``, one per key, with ``output`` made an
    absolute path.

    A key stored twice (a run re-sharded, a row redone after its image was lost) keeps its best
    row: a done ``ok`` row over an error, then the newest. ``only_done`` drops ``ok`` rows whose
    image is missing (they will be recomputed).
    """
    best: dict[tuple[str, str, str], tuple[tuple, ResultRow]] = {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        for path in store_files(run_dir):
            try:
                with ResultStore(path, readonly=True) as store:
                    stored = store.rows()
            except (sqlite3.DatabaseError, IndexError, KeyError, ValueError) as exc:
                raise StoreError(f"{path} is not a readable results store ({exc}); move it out of {run_dir}") from None
            for row in stored:
                done = _is_done(row, run_dir)
                if only_done and not done:
                    continue
                rank = (row.status == STATUS_OK and done, row.created_at)
                if row.output is not None:
                    row = dataclasses.replace(row, output=str((run_dir / row.output).resolve()))
                if row.key not in best or rank > best[row.key][0]:
                    best[row.key] = (rank, row)
    return [row for _, row in best.values()]
