"""Which images' features are already extracted, in the previous cache or an interrupted run.

A stored row is reused for an image when its source holds the same relative path with the same
size and modification time, or, when only the time differs (a ``touch``, a copy that did not keep
times), the same sha256 of the file's bytes. Every other image is extracted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..data.folders import Dataset, Sample
from ..util.files import sha256_file


@dataclass(frozen=True)
class Entry:
    row: int
    size: int
    mtime_ns: int
    sha256: str


def entries(paths: Sequence[str], sizes: Iterable[int], mtimes: Iterable[int], digests: Iterable[str]
            ) -> dict[str, Entry]:
    """Row entries by path, for arrays as stored in a cache or a shard."""
    return {p: Entry(row, int(size), int(mtime), str(digest)) for row, (p, size, mtime, digest)
            in enumerate(zip(paths, sizes, mtimes, digests, strict=True))}


class Source(Protocol):
    """Stored feature rows: the previous cache, or one shard of an interrupted run."""

    entries: dict[str, Entry]

    def features(self, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Found:
    source: Source
    row: int
    sha256: str


@dataclass
class Plan:
    found: dict[int, Found]  # sample index -> where its features already are
    todo: list[int]          # sample indices to run through the backbone, in order


def plan(dataset: Dataset, sources: Sequence[Source], indices: Iterable[int] | None = None) -> Plan:
    """Look up each sample (all, or those in ``indices``) in ``sources``, earlier sources first."""
    found: dict[int, Found] = {}
    todo: list[int] = []
    for i in range(len(dataset.samples)) if indices is None else indices:
        hit = _match(dataset, dataset.samples[i], sources)
        if hit is None:
            todo.append(i)
        else:
            found[i] = hit
    return Plan(found, todo)


def _match(dataset: Dataset, sample: Sample, sources: Sequence[Source]) -> Found | None:
    if sample.size < 0:
        return None
    key = sample.path.as_posix()
    same_size = [(src, src.entries[key]) for src in sources
                 if key in src.entries and src.entries[key].size == sample.size]
    for src, e in same_size:
        if e.mtime_ns == sample.mtime_ns:
            return Found(src, e.row, e.sha256)
    if not same_size:
        return None
    try:
        digest = sha256_file(dataset.root / sample.path)
    except OSError:
        return None  # the reader will meet the same problem, and record it
    return next((Found(src, e.row, e.sha256) for src, e in same_size if e.sha256 == digest), None)
