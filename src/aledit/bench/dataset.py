"""ALE-Bench-style benchmarks on disk: the format, the loader, and the vendored ALE-Bench.

On-disk format (what ``aledit bench generate`` writes and ``aledit bench run`` reads)::

    BENCH/
      images/<image>.jpg|.jpeg|.png|.webp   one source image per name
      masks/<image>/<object>_mask.png       one mask per source object (255 = object; object
                                            names may contain spaces, e.g. "blue globe_mask.png")
      edits.jsonl                           one edit per line (below)
      objects.json                          optional: the generator's input (object lists and
                                            attribute dictionaries, see ``aledit.bench.generate``)

Each line of ``edits.jsonl`` is one edit::

    {"id": "natural_img01-2-color-3", "image": "natural_img01",
     "edits": [["blue globe", "pink-colored globe"], ["box", "red-colored box"]],
     "type": "color", "objects": 2, "seed": 42}

* ``id``: unique in the file; names the result of the edit (``images/<method>/.../<id>.png``).
* ``edits``: ``(source, target)`` pairs; each source names a mask of the image.
* ``type``: one of ``color``, ``object``, ``material``, ``color+object``, ``object+material``
  (appendix B). It is given, not inferred: "blue globe -> pink-colored globe" is a color edit
  although the target drops the source's adjective.
* ``objects``: the number of pairs (1-3 in ALE-Bench).
* ``seed``: the noise seed of the edit (42 in the ALE authors' ``run_ale_bench.py``).

The published layout of ALE-Bench (``prompts/<n>/<type>/<image>_prompts.json``, 10 edits per
file) is read as well, so the vendored copy stays byte-identical to the authors' release; its
edits get ids ``<image>-<n>-<type>-<index>`` and seed 42.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..edits import Edit, EditType

__all__ = [
    "ALE_BENCH_SEED",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
    "BenchEdit",
    "BenchFormatError",
    "Benchmark",
    "ale_bench_root",
    "find_image",
    "load_ale_bench",
    "load_benchmark",
    "read_edits_jsonl",
    "write_benchmark",
    "write_edits_jsonl",
]

logger = logging.getLogger(__name__)

ALE_BENCH_SEED = 42
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MASK_SUFFIX = "_mask.png"
EDITS_FILE = "edits.jsonl"
# The published files spell the combined types as lists.
_PUBLISHED_TYPES = {
    ("color",): EditType.COLOR,
    ("object",): EditType.OBJECT,
    ("material",): EditType.MATERIAL,
    ("color", "object"): EditType.COLOR_OBJECT,
    ("object", "material"): EditType.OBJECT_MATERIAL,
}


class BenchFormatError(ValueError):
    """A benchmark folder or edits file that does not follow the format (message says where)."""


def _norm(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class BenchEdit:
    """One benchmark edit: an image, its (source, target) pairs, a type and a seed.

    Attributes:
        id: unique name of the edit in its benchmark.
        image: name of the source image (file stem under ``images/``).
        pairs: ``((source, target), ...)``, one per edited object, in order.
        edit_type: the ALE-Bench edit type shared by every pair.
        seed: the noise seed the method uses.
    """

    id: str
    image: str
    pairs: tuple[tuple[str, str], ...]
    edit_type: EditType
    seed: int = ALE_BENCH_SEED

    def __post_init__(self) -> None:
        pairs = tuple((_norm(s), _norm(t)) for s, t in self.pairs)
        if not pairs or any(not s or not t for s, t in pairs):
            raise BenchFormatError(f"edit {self.id!r}: needs at least one (source, target) pair of non-empty phrases")
        if len({s.lower() for s, _ in pairs}) != len(pairs):
            raise BenchFormatError(f"edit {self.id!r}: a source object appears twice in {list(pairs)}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "edit_type", EditType(self.edit_type))

    @property
    def num_objects(self) -> int:
        return len(self.pairs)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.pairs)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.pairs)

    @property
    def edits(self) -> tuple[Edit, ...]:
        """The pairs as :class:`~aledit.edits.Edit` with the benchmark's type made explicit."""
        return tuple(Edit(s, t, self.edit_type) for s, t in self.pairs)

    def describe(self) -> str:
        return "; ".join(f"{s} -> {t}" for s, t in self.pairs)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "edits": [list(p) for p in self.pairs],
            "type": self.edit_type.value,
            "objects": self.num_objects,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, record: Mapping, where: str = "edit") -> BenchEdit:
        if not isinstance(record, Mapping):
            raise BenchFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("id", "image", "edits", "type") if k not in record]
        if missing:
            raise BenchFormatError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            pairs = tuple((s, t) for s, t in record["edits"])
        except (TypeError, ValueError):
            raise BenchFormatError(f"{where}: 'edits' must be a list of [source, target] pairs") from None
        try:
            edit_type = EditType(record["type"])
        except (TypeError, ValueError):
            choices = ", ".join(t.value for t in EditType)
            raise BenchFormatError(f"{where}: unknown type {record['type']!r}; choose one of {choices}") from None
        for key in ("seed", "objects"):
            if key in record and (isinstance(record[key], bool) or not isinstance(record[key], int)):
                raise BenchFormatError(f"{where}: {key!r} must be an integer, got {record[key]!r}")
        edit = cls(str(record["id"]), str(record["image"]), pairs, edit_type, record.get("seed", ALE_BENCH_SEED))
        if "objects" in record and record["objects"] != edit.num_objects:
            raise BenchFormatError(f"{where}: 'objects' is {record['objects']} but there are {edit.num_objects} pairs")
        return edit


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: edits plus where their images and masks are.

    Attributes:
        root: the benchmark folder.
        edits: every edit, in file order.
        images: ``{image name: path}``.
        masks: ``{image name: {object name: path}}``.
        name: a short label (the folder's name).
    """

    root: Path
    edits: tuple[BenchEdit, ...]
    images: Mapping[str, Path]
    masks: Mapping[str, Mapping[str, Path]]
    name: str = ""
    _by_id: Mapping[str, BenchEdit] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {e.id: e for e in self.edits})

    def __len__(self) -> int:
        return len(self.edits)

    def edit(self, edit_id: str) -> BenchEdit:
        try:
            return self._by_id[edit_id]
        except KeyError:
            raise KeyError(f"no edit {edit_id!r} in benchmark {self.name or self.root}") from None

    def mask_paths(self, edit: BenchEdit) -> dict[str, Path]:
        """``{source: mask path}`` of an edit, in the edit's order."""
        return {s: self.masks[edit.image][s] for s in edit.sources}

    def subset(self, edits: Iterable[BenchEdit]) -> Benchmark:
        return Benchmark(self.root, tuple(edits), self.images, self.masks, self.name)


# -- reading ---------------------------------------------------------------------------------


def read_edits_jsonl(path: str | os.PathLike) -> list[BenchEdit]:
    """Reads an ``edits.jsonl`` file (blank lines and ``#`` comments skipped)."""
    edits = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{os.fspath(path)}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchFormatError(f"{where}: not valid JSON ({exc.msg})") from None
            edits.append(BenchEdit.from_json(record, where))
    return edits


def write_edits_jsonl(edits: Sequence[BenchEdit], path: str | os.PathLike) -> None:
    """Writes ``edits`` one JSON object per line (via a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in edits)
    os.replace(tmp, path)


def _read_published_prompts(prompts: Path) -> list[BenchEdit]:
    """The authors' ``prompts/<n>/<type>/<image>_prompts.json`` layout, in (n, type, image) order."""
    edits = []
    type_order = {t.value: i for i, t in enumerate(EditType)}
    counts = sorted((p for p in prompts.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for count_dir in counts:
        types = sorted((p for p in count_dir.iterdir() if p.is_dir()), key=lambda p: type_order.get(p.name, 99))
        for type_dir in types:
            for file in sorted(type_dir.glob("*_prompts.json")):
                where = os.fspath(file)
                try:
                    data = json.loads(file.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise BenchFormatError(f"{where}: not valid JSON ({exc.msg})") from None
                image = data.get("image") or file.name[: -len("_prompts.json")]
                for i, prompt in enumerate(data.get("prompts", [])):
                    listed = tuple(prompt.get("editing_types", ()))
                    edit_type = _PUBLISHED_TYPES.get(listed)
                    if edit_type is None or edit_type.value != type_dir.name:
                        raise BenchFormatError(
                            f"{where}, prompt {i}: editing_types {list(listed)} do not match "
                            f"the folder {type_dir.name!r}"
                        )
                    index = prompt.get("index", i)
                    edit = BenchEdit(
                        f"{image}-{count_dir.name}-{type_dir.name}-{index}",
                        image,
                        tuple((s, t) for s, t in prompt.get("edits", ())),
                        edit_type,
                        ALE_BENCH_SEED,
                    )
                    if edit.num_objects != int(count_dir.name):
                        raise BenchFormatError(
                            f"{where}, prompt {i}: {edit.num_objects} pairs in folder {count_dir.name}"
                        )
                    edits.append(edit)
    return edits


def _index_images(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in images:
                raise BenchFormatError(f"two images named {p.stem!r} in {folder}: {images[p.stem].name} and {p.name}")
            images[p.stem] = p
    return images


def _index_masks(folder: Path) -> dict[str, dict[str, Path]]:
    masks: dict[str, dict[str, Path]] = {}
    if not folder.is_dir():
        return masks
    for image_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        masks[image_dir.name] = {
            p.name[: -len(MASK_SUFFIX)]: p for p in sorted(image_dir.iterdir()) if p.name.endswith(MASK_SUFFIX)
        }
    return masks


def _check(edits: Sequence[BenchEdit], images: Mapping[str, Path], masks: Mapping[str, Mapping[str, Path]], root: Path):
    seen: set[str] = set()
    for e in edits:
        if e.id in seen:
            raise BenchFormatError(f"{root}: edit id {e.id!r} appears twice; ids must be unique")
        seen.add(e.id)
        if e.image not in images:
            raise BenchFormatError(
                f"{root}: edit {e.id!r} uses image {e.image!r} but images/ has no {e.image}"
                f"{{{','.join(IMAGE_EXTENSIONS)}}}"
            )
        have = masks.get(e.image, {})
        for s in e.sources:
            if s not in have:
                expected = root / "masks" / e.image / f"{s}{MASK_SUFFIX}"
                raise BenchFormatError(f"{root}: edit {e.id!r} edits {s!r} but there is no mask {expected}")


def load_benchmark(root: str | os.PathLike) -> Benchmark:
    """Loads a benchmark folder: ``edits.jsonl`` if present, else the published ``prompts/`` layout.

    Every edit's image and masks must exist (:class:`BenchFormatError` names the first one
    missing). Object names are kept as written, spaces included.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchFormatError(f"benchmark folder not found: {root}")
    if (root / EDITS_FILE).is_file():
        edits = read_edits_jsonl(root / EDITS_FILE)
    elif (root / "prompts").is_dir():
        edits = _read_published_prompts(root / "prompts")
    else:
        raise BenchFormatError(f"{root} has neither {EDITS_FILE} nor a prompts/ folder; is it a benchmark?")
    if not (root / "images").is_dir():
        raise BenchFormatError(f"{root} has no images/ folder")
    images = _index_images(root / "images")
    masks = _index_masks(root / "masks")
    _check(edits, images, masks, root)
    return Benchmark(root=root, edits=tuple(edits), images=images, masks=masks, name=root.name)


def ale_bench_root() -> Path:
    """The ALE-Bench copy shipped inside the package (Apache-2.0, see its LICENSE and NOTICE.md)."""
    return Path(__file__).resolve().parent / "data" / "ale-bench"


def load_ale_bench(root: str | os.PathLike | None = None) -> Benchmark:
    """ALE-Bench (20 images, 68 masks, 3,000 edits), from ``root`` or the vendored copy."""
    return load_benchmark(ale_bench_root() if root is None else root)


def find_image(folder: str | os.PathLike, image: str) -> Path | None:
    """``folder/<image>.<ext>`` for the first of :data:`IMAGE_EXTENSIONS` that exists."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (Path(folder) / f"{image}{ext}", Path(folder) / f"{image}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def write_benchmark(
    out: str | os.PathLike,
    edits: Sequence[BenchEdit],
    image_files: Mapping[str, str | os.PathLike],
    mask_files: Mapping[str, Mapping[str, str | os.PathLike]],
    extra_files: Mapping[str, bytes] | None = None,
) -> Benchmark:
    """Writes a self-contained benchmark folder: copies of the images and masks, ``edits.jsonl``
    and ``extra_files`` (``{name: content}``, e.g. ``objects.json``).

    Everything is built in a temporary folder beside ``out`` and renamed into place, so ``out``
    appears complete or not at all. ``out`` must not exist or be an empty folder.
    """
    import shutil
    import tempfile

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        (tmp / "images").mkdir()
        for image, src in image_files.items():
            shutil.copyfile(src, tmp / "images" / f"{image}{Path(src).suffix.lower()}")
        for image, objects in mask_files.items():
            (tmp / "masks" / image).mkdir(parents=True)
            for name, src in objects.items():
                shutil.copyfile(src, tmp / "masks" / image / f"{name}{MASK_SUFFIX}")
        write_edits_jsonl(edits, tmp / EDITS_FILE)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
        load_benchmark(tmp)  # the folder must load as written
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_benchmark(out)
