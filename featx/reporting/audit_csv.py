"""The audit CSV: where it goes beside a cache, its rows, written by `featx audit` and read back,
checked, by the report.

One row per finding, ``kind,path,split,given,suggested,score,other``: ``label`` (an image whose
given label its out-of-fold prediction doubts: ``score`` one minus the probability of the given
label, ``suggested`` the class predicted), ``duplicate`` (two images of one split whose features
are nearly the same, or whose bytes are: ``score`` their similarity, ``other`` the second image,
``given`` and ``suggested`` the two images' labels) or ``leak`` (the same, across splits: ``split``
names both, ``train/val``). Rows are sorted by ``score``, highest first, within each kind.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..util.files import cell, durable_write, uncell
from ..util.schema import Invalid

COLUMNS = ("kind", "path", "split", "given", "suggested", "score", "other")
KINDS = ("label", "duplicate", "leak")
# How every audit CSV begins: what tells one featx wrote from a file it must not replace.
START = re.compile(re.escape(",".join(COLUMNS).encode()) + rb"\r?\n")


@dataclass(frozen=True)
class Finding:
    """One row of the audit CSV (module docstring)."""

    kind: str
    path: str
    split: str
    given: str
    suggested: str
    score: float
    other: str = ""


def audit_path(cache: Path) -> Path:
    """Where a cache's audit goes by default: beside it, ``NAME.audit.csv``."""
    return cache.with_name(f"{cache.stem}.audit.csv")


def write_audit(path: Path, findings: list[Finding]) -> None:
    """The CSV, written whole (``durable_write``); text cells safe from spreadsheets."""
    # A file name that is not valid UTF-8 is written as its own bytes, as the file system has it.
    with durable_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                          errors="surrogateescape") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in findings:
            w.writerow([r.kind, *map(cell, (r.path, r.split, r.given, r.suggested)), f"{r.score:.6f}",
                        cell(r.other)])


def read_audit(path: Path) -> list[Finding]:
    """The rows of an audit CSV; ``Invalid`` naming the first row or cell that is not as
    ``write_audit`` writes it, ``OSError`` or ``csv.Error`` where it cannot be read."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if tuple(header or ()) != COLUMNS:
            raise Invalid("its header", f"is not {','.join(COLUMNS)}")
        found = []
        for line, row in enumerate(rows, 2):
            if len(row) != len(COLUMNS):
                raise Invalid(f"row {line}", f"has {len(row)} cells, not {len(COLUMNS)}")
            kind, score = row[0], _score(row[5])
            if kind not in KINDS:
                raise Invalid(f"row {line}", f"is of kind {kind!r}, none of {', '.join(KINDS)}")
            if not 0 <= score <= 1:
                raise Invalid(f"row {line}", f"has the score {row[5]!r}, not a number from 0 to 1")
            found.append(Finding(kind, *map(uncell, row[1:5]), score, uncell(row[6])))
    return found


def _score(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # refused as out of range, as "nan" itself is
