"""Labels from a table: a CSV or JSONL manifest that names each image's file, label and split,
for the image folders that come flat with a ``train.csv`` instead of one subfolder per class.

A row that cannot be used (no such file, one stem naming several, a path outside the folder, an
empty label, a split of another name, an image listed again with another label) is refused on
its own and recorded with why, as an unreadable image is; the rest of the manifest is used.
Only what makes the whole table unusable (no such file, no path or label column) is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, first_line
from ..util.schema import MAX_TEXT, Invalid, load_json, shown
from .folders import (
    SPLIT_DIRS,
    SPLITS,
    Dataset,
    Sample,
    find_images,
    is_image,
    named,
    sample,
    scan,
    scan_unlabelled,
)

log = logging.getLogger(__name__)

# Each column's usual spellings, the first present taken (compared in lower case).
COLUMNS = {
    "path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path",
             "image_name", "img", "image_id", "id"),
    "label": ("label", "class", "target", "category", "class_name", "labels", "y"),
    "split": ("split", "subset"),
}
# A split cell left empty means what a manifest without the column means.
DEFAULT_SPLIT = "train"
# Longer than any class name people write, and short enough for every line that shows one.
MAX_LABEL = 200


@dataclass(frozen=True)
class Manifest:
    """A manifest file, and the columns named on the command line (``FILE:label=breed``)."""

    path: Path
    columns: tuple[tuple[str, str], ...] = ()  # (path|label|split, the file's column)

    @classmethod
    def parse(cls, text: str | os.PathLike) -> Manifest:
        """``FILE`` or ``FILE:path=COL,label=COL,split=COL`` (any of the three)."""
        text = os.fspath(text)
        file, _, spec = text.rpartition(":")
        if not file or not re.fullmatch(r"\w+=[^,=]+(,\w+=[^,=]+)*", spec):
            return cls(Path(text))
        columns = tuple(tuple(p.split("=")) for p in spec.split(","))
        unknown = [k for k, _ in columns if k not in COLUMNS]
        if unknown:
            raise DataError(f"{text}: {unknown[0]!r} is not a manifest column to name; name "
                            f"{', '.join(COLUMNS)}, e.g. {file}:path=image,label=breed")
        return cls(Path(file), columns)


@dataclass(frozen=True)
class _Row:
    number: int  # the line in the file, as an editor shows it
    path: str
    label: str
    split: str


def _records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict | Invalid]]]:
    """The file's column names, and its rows as (line, {column: value}) or (line, why not)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".json":  # one list of objects, numbered as its items
            items = load_json(text, str(path))
            if not isinstance(items, list):
                raise Invalid(str(path), "is not a JSON list of objects (or give JSON Lines, .jsonl)")
            records = [(n, item) for n, item in enumerate(items, 1)]
        else:
            records = [(n, _object(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        records = [(n, r if isinstance(r, dict | Invalid) else Invalid("it", "is not a JSON object"))
                   for n, r in records]
        names = list(dict.fromkeys(k for _, r in records if isinstance(r, dict) for k in r))
        return names, iter(records)
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    names = list(reader.fieldnames or [])

    def rows() -> Iterator[tuple[int, dict]]:
        with handle:
            for record in reader:
                yield reader.line_num, record
    return names, rows()


def _object(line: str) -> object:
    try:
        return load_json(line, "it")
    except Invalid as e:
        return e


def _columns(manifest: Manifest, names: list[str]) -> dict[str, str | None]:
    """For path, label and split, the column of the file that holds it (split: None if none)."""
    given = dict(manifest.columns)
    lower = {n.strip().lower(): n for n in names if isinstance(n, str)}
    found: dict[str, str | None] = {}
    for role, spellings in COLUMNS.items():
        if role in given:
            if given[role] not in names:
                raise DataError(f"{manifest.path} has no column {given[role]!r} (it has "
                                f"{', '.join(map(repr, names[:12])) or 'none'})")
            found[role] = given[role]
        else:
            found[role] = next((lower[s] for s in spellings if s in lower), None)
        if found[role] is None and role != "split":
            has = ", ".join(map(repr, names[:12])) or "none"
            raise DataError(f"{manifest.path} has no {role} column (looked for "
                            f"{', '.join(spellings[:6])}, ...; it has {has}): name it as "
                            f"{manifest.path}:{role}=COLUMN")
    return found


def _rows(manifest: Manifest) -> tuple[list[_Row], list[tuple[str, str]]]:
    """The manifest's usable rows, and (what, why) for each row refused."""
    where = manifest.path
    try:
        names, records = _records(where)
        columns = _columns(manifest, names)
        rows, refused = [], []
        for number, record in records:
            row = record if isinstance(record, Invalid) else _row(number, record, columns)
            if isinstance(row, _Row):
                rows.append(row)
            else:  # named by its path where it has one, as the file would be
                path = record.get(columns["path"]) if isinstance(record, dict) else None
                refused.append((str(path).strip() if isinstance(path, str | int) and str(path).strip()
                                else f"{where.name}:{number}", f"line {number} of {where.name}: {row}"))
        return rows, refused
    except (OSError, UnicodeDecodeError, csv.Error, Invalid) as e:
        why = getattr(e, "strerror", None) or first_line(e)
        raise DataError(f"cannot read the manifest {where} ({why}): give a CSV or JSONL file "
                        f"with a path and a label column") from e


def _row(number: int, record: dict, columns: dict[str, str | None]) -> _Row | str:
    """A row, or why it cannot be used."""
    cells = {}
    for role, column in columns.items():
        value = record.get(column) if column is not None else None
        if isinstance(value, bool) or not isinstance(value, str | int | float | type(None)):
            return f"its {role} {shown(value)} is not a text or a number"
        cells[role] = "" if value is None else str(value).strip()
        if len(cells[role]) > MAX_TEXT:
            return f"its {role} is {len(cells[role]):,} characters long"
    if not cells["path"]:
        return "no path"
    if not cells["label"]:
        return "an empty label"
    if len(cells["label"]) > MAX_LABEL or not cells["label"].isprintable():
        return (f"the label {shown(cells['label'])} is not a class name (printable, up to "
                f"{MAX_LABEL} characters)")
    split = SPLIT_DIRS.get(cells["split"].lower()) if cells["split"] else DEFAULT_SPLIT
    if split is None:
        return f"the split {shown(cells['split'])} is none of {', '.join(SPLIT_DIRS)}"
    return _Row(number, cells["path"], cells["label"], split)


class _Files:
    """The images of a data folder, found by the path a row gives: as it is (relative to the
    folder, or absolute inside it), else by its stem (``id`` columns name files without their
    extension), where one file alone has it."""

    def __init__(self, root: Path):
        self.root, self.real_root = root, Path(os.path.realpath(root))
        self._stems: dict[str, list[Path]] | None = None

    def find(self, text: str) -> Path | str:
        """The image's path relative to the folder, or why there is none."""
        given = Path(text)
        try:
            if given.is_absolute():
                real = Path(os.path.realpath(given))
                if not real.is_relative_to(self.real_root):
                    return f"outside the data folder {self.root}"
                given = real.relative_to(self.real_root)
            if ".." in given.parts:
                return f"climbs out of the data folder {self.root}"
            if (self.root / given).is_file():
                return given if is_image(given) else "not an image file"
        except (OSError, ValueError):  # a NUL byte, a name too long
            return "no path a file can have"
        matches = self.stems().get(given.as_posix(), [])
        if len(matches) > 1:
            return (f"could be any of {', '.join(p.as_posix() for p in matches[:3])}: give the "
                    f"file's path with its extension")
        if matches:
            return matches[0]
        extension = "" if is_image(given) else " (nor one of that name with an image extension)"
        return f"no such file in {self.root}{extension}"

    def stems(self) -> dict[str, list[Path]]:
        """The images by their path without its extension, and by their bare stem as well: a
        Kaggle id names a file in ``train/`` when the folder given is the one above."""
        if self._stems is None:  # read once, and only where some row names no file as it is
            self._stems = {}
            for p in find_images(self.root):
                for key in {p.with_suffix("").as_posix(), p.stem}:
                    self._stems.setdefault(key, []).append(p)
        return self._stems


def scan_manifest(root: Path, manifest: Manifest) -> Dataset:
    """The images a manifest lists in the data folder ``root``, its labels and splits; classes
    are the sorted distinct labels. Rows that cannot be used are in ``Dataset.refused``."""
    rows, refused = _rows(manifest)
    files, chosen = _Files(root), {}
    for row in rows:
        found = files.find(row.path)
        if isinstance(found, str):
            refused.append((row.path, f"line {row.number} of {manifest.path.name}: {found}"))
        else:
            chosen.setdefault(found, []).append(row)
    entries = []
    for path, listed in chosen.items():
        if len({(r.label, r.split) for r in listed}) > 1:  # which to believe? neither
            lines = " and ".join(str(r.number) for r in listed[:5])
            refused += [(r.path, f"line {r.number} of {manifest.path.name}: listed on lines {lines} with "
                                 f"other labels or splits") for r in listed]
        else:
            entries.append((path, listed[0]))
    if not entries:
        raise DataError(f"no row of {manifest.path} names an image in {root}"
                        + (f" (first: {refused[0][1]})" if refused else ""))
    classes = tuple(sorted({row.label for _, row in entries}))
    index = {c: i for i, c in enumerate(classes)}
    order = {split: i for i, split in enumerate(SPLITS)}
    samples = sorted((sample(root, path, index[row.label], row.split) for path, row in entries),
                     key=lambda s: (order[s.split], s.path))
    return Dataset(root=root, classes=classes, samples=tuple(samples), refused=tuple(refused))


def labelled(root: str | os.PathLike, labels: str | os.PathLike | Manifest | None = None) -> Dataset:
    """The labelled images of the data folder ``root``: as a manifest ``labels`` lists them,
    or (None) as its class subfolders hold them."""
    if labels is None:
        return scan(root)
    root = named(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder the manifest's paths are in")
    return scan_manifest(root, labels if isinstance(labels, Manifest) else Manifest.parse(labels))


def to_score(folder: str | os.PathLike, classes: tuple[str, ...],
             labels: str | os.PathLike | Manifest | None = None) -> Dataset:
    """The images of ``folder`` to score with a bundle of ``classes``: every one below it,
    labelled by its class folder, or (with a manifest ``labels``) those the manifest lists,
    labelled by it; a label none of ``classes`` leaves its image unlabelled."""
    if labels is None:
        return scan_unlabelled(folder, classes)
    dataset = labelled(folder, labels)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(dataset.classes) - set(index))
    if unknown:
        log.warning("%d labels of the manifest are none of the bundle's classes (e.g. %s): their "
                    "images are scored, and left out of the accuracy", len(unknown), shown(unknown[0]))
    samples = tuple(Sample(s.path, index.get(dataset.classes[s.label], -1), "", s.size, s.mtime_ns)
                    for s in dataset.samples)
    return dataclasses.replace(dataset, classes=tuple(classes), samples=samples)
