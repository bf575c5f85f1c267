"""ALE-Bench (paper 4.1, appendix B): the data, a generator, a resumable runner and the report.

* ``dataset``: the on-disk format, :func:`load_benchmark`, :func:`load_ale_bench` (the copy
  shipped in ``aledit/bench/data/ale-bench``, Apache-2.0).
* ``generate``: object lists + attribute dictionaries -> edits, by the appendix B templates.
* ``methods``: name -> editing method registry (``ale`` built in).
* ``store`` / ``runner``: one SQLite row per (edit, method, config), crash-safe and sharded.
* ``report``: the paper's tables as Markdown and CSV, a bar chart and a gallery.
* ``cli``: ``aledit bench generate | run | report``.

The runner and report pull in torch; import them from their modules or by name from here.
"""

from .dataset import (
    BenchEdit,
    BenchFormatError,
    Benchmark,
    ale_bench_root,
    load_ale_bench,
    load_benchmark,
    read_edits_jsonl,
    write_benchmark,
    write_edits_jsonl,
)
from .generate import (
    TEMPLATES,
    ImageObjects,
    ObjectSpec,
    derive_object_lists,
    expected_counts,
    generate_edits,
    read_objects_json,
    write_objects_json,
)

__all__ = [
    "TEMPLATES",
    "BenchEdit",
    "BenchFormatError",
    "BenchMethod",
    "Benchmark",
    "ImageObjects",
    "MethodSettings",
    "ObjectSpec",
    "RunSummary",
    "Shard",
    "ale_bench_root",
    "build_method",
    "derive_object_lists",
    "expected_counts",
    "generate_edits",
    "load_ale_bench",
    "load_benchmark",
    "read_edits_jsonl",
    "read_objects_json",
    "read_results",
    "register_method",
    "run_benchmark",
    "write_benchmark",
    "write_edits_jsonl",
    "write_objects_json",
    "write_report",
]

_LAZY = {
    "BenchMethod": "methods",
    "MethodSettings": "methods",
    "build_method": "methods",
    "register_method": "methods",
    "RunSummary": "runner",
    "Shard": "runner",
    "run_benchmark": "runner",
    "read_results": "store",
    "write_report": "report",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
