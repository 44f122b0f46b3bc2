"""The HDF5 feature cache: its name, its layout, writing it whole, and reading it back, whole or
a block of rows at a time.

Layout (all row datasets have one row per successfully read image, in the same order):

    /features          N × D float32 (or float16), chunked by rows
    /labels            N int32, index into /classes
    /paths             N str, relative to the dataset root
    /splits            N str, "train" | "val" | "test"
    /files/size        N int64, bytes of the file each row was read from, when it was scanned
    /files/mtime_ns    N int64, its modification time
    /files/sha256      N str, the sha256 of its bytes
    /classes           C str
    /failed/paths      str, images that could not be read
    /failed/errors     str, why
    attributes         backbone, weights_sha256, preprocessing (JSON), pool, feature_dim, ... (see
                       ``write``)

Strings are stored as UTF-8; a file name that is not valid UTF-8 keeps its own bytes, so it is
read back with ``errors="surrogateescape"``. A cache is only ever written whole under a temporary
name and renamed into place (``files.durable_write``), so a file named ``.h5`` is always complete;
unfinished work lives in ``NAME.h5.partial/`` (``partial``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__, reuse
from .data import Dataset
from .errors import CacheError
from .files import durable_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: /files/*, written whole; 1 had no record of the files read
DTYPES = ("float32", "float16")
_STR = h5py.string_dtype("utf-8")
# Attributes that decide what a feature is: any difference means the features differ.
IDENTITY_KEYS = ("backbone", "weights_sha256", "pool", "feature_dim", "input_size",
                 "preprocessing", "dtype")


def config_key(identity: dict, dtype: str) -> str:
    ident = {**{k: identity[k] for k in IDENTITY_KEYS if k != "dtype"}, "dtype": dtype}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def default_path(data_root: Path, identity: dict, dtype: str, out_dir: str | os.PathLike = "cache") -> Path:
    """``cache/<dataset>-<backbone>-<pool>[-float16]-<hash>.h5``; the hash covers the absolute
    dataset path and every setting that changes a feature."""
    key = config_key(identity, dtype)
    short = hashlib.sha256(f"{data_root.resolve()}\0{key}".encode()).hexdigest()[:10]
    parts = [data_root.resolve().name, identity["backbone"], identity["pool"]]
    if dtype != "float32":
        parts.append(dtype)
    return Path(out_dir) / f"{'-'.join(parts)}-{short}.h5"


def mismatch(have: dict, want: dict) -> str | None:
    """The first setting that decides what a feature is and differs between two identities."""
    return next((k for k in IDENTITY_KEYS if k in have and k in want and have[k] != want[k]), None)


def _versions() -> dict:
    import torch
    import torchvision

    return dict(featx_version=__version__, torch_version=str(torch.__version__),
                torchvision_version=str(torchvision.__version__))


def _encoded(strings) -> list[bytes]:
    return [s.encode("utf-8", "surrogateescape") for s in strings]


def _strings(ds: h5py.Dataset) -> list[str]:
    return ds.asstr(errors="surrogateescape")[()].tolist()


@dataclass(frozen=True)
class Contents:
    """Everything a cache holds but its features and provenance: equal contents, same cache."""

    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    splits: tuple[str, ...]
    size: tuple[int, ...]
    mtime_ns: tuple[int, ...]
    sha256: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, dataset: Dataset, found: dict[int, reuse.Found], failed: dict[int, str]) -> Contents:
        """The contents for ``dataset`` with each image either found (its row) or failed."""
        rows = [dataset.samples[i] for i in sorted(found)]
        return cls(classes=dataset.classes, paths=tuple(s.path.as_posix() for s in rows),
                   labels=tuple(s.label for s in rows), splits=tuple(s.split for s in rows),
                   size=tuple(s.size for s in rows), mtime_ns=tuple(s.mtime_ns for s in rows),
                   sha256=tuple(found[i].sha256 for i in sorted(found)),
                   failed=tuple((dataset.samples[i].path.as_posix(), err)
                                for i, err in sorted(failed.items())))

    @classmethod
    def read(cls, f: h5py.File) -> Contents:
        return cls(classes=tuple(_strings(f["classes"])), paths=tuple(_strings(f["paths"])),
                   labels=tuple(f["labels"][()].tolist()), splits=tuple(_strings(f["splits"])),
                   size=tuple(f["files/size"][()].tolist()),
                   mtime_ns=tuple(f["files/mtime_ns"][()].tolist()),
                   sha256=tuple(_strings(f["files/sha256"])),
                   failed=tuple(zip(_strings(f["failed/paths"]), _strings(f["failed/errors"]),
                                    strict=True)))


class PreviousCache:
    """The complete cache already at a path, as a source of rows to reuse (a ``reuse.Source``)."""

    def __init__(self, path: Path):
        self.path, self.file = path, h5py.File(path, "r")
        self.contents = Contents.read(self.file)
        self.entries = reuse.entries(self.contents.paths, self.contents.size,
                                     self.contents.mtime_ns, self.contents.sha256)

    def features(self, start: int, stop: int) -> np.ndarray:
        return self.file["features"][start:stop]

    def close(self) -> None:
        self.file.close()


def previous(path: Path, identity: dict, dtype: str) -> PreviousCache | None:
    """The cache at ``path``, if it holds features made with these settings, to reuse rows of."""
    attrs = read_attrs(path)
    if attrs is not None and attrs.get("format_version") == FORMAT_VERSION:
        if attrs["config_key"] != config_key(identity, dtype):
            have, want = {**_identity(attrs), "dtype": attrs["dtype"]}, {**identity, "dtype": dtype}
            key = mismatch(have, want)
            log.warning("%s holds features made with %s=%s, not %s=%s: extracting every image again",
                        path, key, have[key], key, want[key])
            return None
        try:
            return PreviousCache(path)
        except (OSError, KeyError, ValueError):
            pass
    if path.exists():
        log.warning("%s is not a complete featx cache of format %d: extracting every image again",
                    path, FORMAT_VERSION)
    return None


def _runs(pairs: list[tuple[int, int]]):
    """(row, out, n) for each stretch of consecutive rows that land on consecutive outputs."""
    start = 0
    for k in range(1, len(pairs) + 1):
        if k == len(pairs) or pairs[k] != (pairs[k - 1][0] + 1, pairs[k - 1][1] + 1):
            yield pairs[start][0], pairs[start][1], k - start
            start = k


def _copy_features(dst: h5py.Dataset, placed: list[reuse.Found]) -> None:
    """Fill ``dst`` row by row from where each row was found, reading each source in windows of
    about 64 MiB, so that no cache is ever held in memory whole."""
    window = max(1, (64 << 20) // (dst.shape[1] * dst.dtype.itemsize))
    by_source: dict[reuse.Source, list[tuple[int, int]]] = {}
    for out, found in enumerate(placed):
        by_source.setdefault(found.source, []).append((found.row, out))
    for source, pairs in by_source.items():
        pairs.sort()
        start = 0
        while start < len(pairs):
            first = pairs[start][0]
            stop = next((k for k in range(start, len(pairs)) if pairs[k][0] >= first + window),
                        len(pairs))
            block = source.features(first, pairs[stop - 1][0] + 1)
            for row, out, n in _runs(pairs[start:stop]):
                dst[out:out + n] = block[row - first:row - first + n]
            start = stop


def write(path: Path, contents: Contents, placed: list[reuse.Found], identity: dict, dtype: str,
          tmp: Path, **attrs) -> Path:
    """Write the cache at ``path`` whole: rows in ``contents`` order, features from ``placed``."""
    dim = identity["feature_dim"]
    with durable_write(path, tmp), h5py.File(tmp, "w") as f:
        rows = max(1, (1 << 20) // (dim * np.dtype(dtype).itemsize))
        features = f.create_dataset("features", (len(placed), dim), dtype=dtype,
                                    maxshape=(None, dim), chunks=(rows, dim))
        _copy_features(features, placed)
        f.create_dataset("labels", data=np.array(contents.labels, np.int32))
        for name, values in [("paths", contents.paths), ("splits", contents.splits),
                             ("classes", contents.classes), ("files/sha256", contents.sha256),
                             ("failed/paths", [p for p, _ in contents.failed]),
                             ("failed/errors", [e for _, e in contents.failed])]:
            f.create_dataset(name, data=_encoded(values), dtype=_STR, shape=(len(values),))
        f.create_dataset("files/size", data=np.array(contents.size, np.int64))
        f.create_dataset("files/mtime_ns", data=np.array(contents.mtime_ns, np.int64))
        f.attrs.update(dict(
            {k: v for k, v in identity.items() if k != "preprocessing"},
            preprocessing=json.dumps(identity["preprocessing"]), dtype=dtype,
            config_key=config_key(identity, dtype), format_version=FORMAT_VERSION,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            n_images=len(contents.paths), n_failed=len(contents.failed), complete=True,
            **_versions(), **attrs))
    return path


def read_attrs(path: Path) -> dict | None:
    """The attributes of a complete cache at ``path``, or None if there is none there."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs) if f.attrs.get("complete") else None
    except (OSError, FileNotFoundError):
        return None


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise CacheError(f"cannot read {path} as HDF5 ({e}): extract it again") from e


# Reads of about this much: one chunk of a cache ``write`` made; whole chunks of any other.
BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class DiskFeatures:
    """A cache's ``/features`` left on disk and read a block of rows at a time, each block whole
    HDF5 chunks, so that memory holds one block rather than all N rows."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    block_rows: int

    @classmethod
    def of(cls, path: Path, ds: h5py.Dataset) -> DiskFeatures:
        chunk = ds.chunks[0] if ds.chunks else 1
        row_bytes = max(1, ds.shape[1] * ds.dtype.itemsize)
        # Tiny chunks would make a read per few rows; round up to whole chunks of BLOCK_BYTES.
        return cls(path, ds.shape, ds.dtype, chunk * max(1, -(-BLOCK_BYTES // (chunk * row_bytes))))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def n_blocks(self) -> int:
        return -(-self.shape[0] // self.block_rows)

    def read(self) -> np.ndarray:
        """All rows, in memory."""
        with _reading(self.path), h5py.File(self.path, "r") as f:
            return f["features"][()]

    def blocks(self, rows: np.ndarray | None = None, order: Sequence[int] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, features)`` of the ``rows`` (default: all) in each block, visiting blocks
        ``order`` (block numbers; default: file order); a block with none of the rows is not read."""
        wanted = np.ones(len(self), bool)
        if rows is not None:
            wanted[:] = False
            wanted[rows] = True
        with _reading(self.path), h5py.File(self.path, "r") as f:
            ds = f["features"]
            for b in range(self.n_blocks) if order is None else order:
                start = b * self.block_rows
                stop = min(start + self.block_rows, len(self))
                keep = np.flatnonzero(wanted[start:stop])
                if len(keep):
                    block = ds[start:stop]
                    yield start + keep, block if len(keep) == stop - start else block[keep]


@dataclass
class FeatureCache:
    """A cache opened: the arrays, and the attributes that describe them; the features in
    memory, or left on disk (``open_cache(..., in_memory=False)``)."""

    path: Path
    features: np.ndarray | DiskFeatures
    labels: np.ndarray
    paths: list[str]
    splits: np.ndarray
    classes: list[str]
    attrs: dict
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def identity(self) -> dict:
        return _identity(self.attrs)


def _identity(a: dict) -> dict:
    """The backbone identity (as ``FeatureExtractor.identity`` gives it) in a cache's attributes."""
    return dict(backbone=a["backbone"], weights_sha256=a["weights_sha256"],
                weights_path=a.get("weights_path", ""), pool=a["pool"],
                feature_dim=int(a["feature_dim"]), input_size=int(a["input_size"]),
                preprocessing=json.loads(a["preprocessing"]))


def open_cache(path: str | os.PathLike, identity: dict | None = None, in_memory: bool = True
               ) -> FeatureCache:
    """Read a cache; with ``identity`` (a bundle's, say), refuse one whose features differ.

    With ``in_memory=False`` the features stay on disk as ``DiskFeatures``, to be read in blocks;
    labels, paths and splits are read either way.
    """
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (f" ({partial} is an unfinished extraction: run featx extract again)"
                if partial.exists() else ": run `featx extract DATA` first; it prints the path")
        raise CacheError(f"no feature cache at {path}{hint}")
    with _reading(path), h5py.File(path, "r") as f:
        if f.attrs.get("format_version") != FORMAT_VERSION or not f.attrs.get("complete"):
            raise CacheError(f"{path} is not a complete featx cache (format "
                             f"{FORMAT_VERSION}): extract it again")
        fc = FeatureCache(
            path=path, features=DiskFeatures.of(path, f["features"]), labels=f["labels"][()],
            paths=_strings(f["paths"]), splits=np.array(_strings(f["splits"])),
            classes=_strings(f["classes"]), attrs=dict(f.attrs),
            failed=list(zip(_strings(f["failed/paths"]), _strings(f["failed/errors"]),
                            strict=True)))
    key = mismatch(fc.identity, identity) if identity is not None else None
    if key is not None:
        raise CacheError(f"{path} holds features made with {key}={fc.identity[key]}, not the "
                         f"{key}={identity[key]} asked for: extract the images again with those settings")
    if in_memory:
        fc.features = fc.features.read()
    return fc
