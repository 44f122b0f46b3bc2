"""``featx check``: what extraction would skip in an image folder, and which images repeat."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..runtime import default_workers
from ..util.processes import die_with_parent
from ..util.progress import progress_bar
from .folders import Sample
from .images import error_line, read_image
from .manifest import Manifest, labelled


@dataclass
class CheckReport:
    root: Path
    classes: tuple[str, ...]
    split_counts: dict[str, int]
    skipped: list[tuple[str, str]]   # (path, why) for each file, or row of a manifest, extract would skip
    ignored: list[tuple[str, str]]   # (path, why) for each folder the scan passes over
    duplicates: list[list[Sample]]   # groups of images with the very same bytes, in scan order
    seconds: float

    @property
    def leaks(self) -> list[list[Sample]]:
        """Duplicates in more than one split: an image in train is also in val or test."""
        return [g for g in self.duplicates if len({s.split for s in g}) > 1]
def _digest(path: Path) -> tuple[str | None, str | None]:
    """(sha256, None) for an image extract can read, else (None, why)."""
    try:
        return read_image(path)[1], None
    except Exception as e:  # exactly what the extraction's reader records as a skip
        return None, error_line(e)


def check(data: str | os.PathLike, workers: int | None = None, progress: bool = True,
          labels: str | os.PathLike | Manifest | None = None) -> CheckReport:
    """Scan ``data`` as ``extract`` does (with the manifest ``labels``, if given) and decode every
    image, without running any model.

    Reports each file extraction would skip and why, the folders the scan passes over, and the
    groups of images whose bytes are identical (within a split, or leaking across splits).
    """
    start = time.perf_counter()
    dataset = labelled(data, labels)
    paths = [dataset.root / s.path for s in dataset.samples]
    workers = default_workers() if workers is None else workers
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=die_with_parent) if workers \
            else contextlib.nullcontext() as pool:
        digests = pool.map(_digest, paths, chunksize=16) if pool else map(_digest, paths)
        results = list(progress_bar(len(paths), "check", enabled=progress, iterable=digests))
    groups: dict[str, list[Sample]] = {}
    skipped = list(dataset.refused)
    for s, (digest, error) in zip(dataset.samples, results, strict=True):
        if digest is None:
            skipped.append((s.path.as_posix(), error))
        else:
            groups.setdefault(digest, []).append(s)
    return CheckReport(dataset.root, dataset.classes, dataset.split_counts(), skipped,
                       list(dataset.ignored), [g for g in groups.values() if len(g) > 1],
                       time.perf_counter() - start)
