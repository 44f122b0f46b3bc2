"""Reading a cache back: whole, or its features left on disk and read a block of rows at a time;
and the complete cache already at a path, as a source of rows for an update to reuse."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..backbones.identity import FeatureIdentity
from ..errors import CacheError, first_line
from ..util.schema import Invalid, fits
from . import reuse
from .format import ATTRIBUTES, FORMAT_VERSION, Contents, check_cache, identity_of, is_complete, strings

log = logging.getLogger(__name__)


class PreviousCache:
    """The complete cache already at a path, as a source of rows to reuse (a ``reuse.Source``)."""

    def __init__(self, path: Path):
        self.path, self.file = path, h5py.File(path, "r")
        try:
            outside = _elsewhere(self.file)
            if outside:
                raise ValueError(outside)
            check_cache(self.file)
            self.contents = Contents.read(self.file)
            c = self.contents
            _check_parts(self.file["features"].shape, identity_of(dict(self.file.attrs)), c.labels,
                        len(c.paths), len(c.splits), len(c.classes))
        except BaseException:
            self.file.close()
            raise
        self.entries = reuse.entries(self.contents.paths, self.contents.size,
                                     self.contents.mtime_ns, self.contents.sha256)

    def features(self, start: int, stop: int) -> np.ndarray:
        return self.file["features"][start:stop]

    def close(self) -> None:
        self.file.close()


def previous(path: Path, identity: FeatureIdentity, dtype: str, data_id: str) -> PreviousCache | None:
    """The cache at ``path``, if it holds features made with these settings, to reuse rows of.

    Raises ``CacheError`` where ``path`` is a file that is not a featx cache, or the cache of
    another image folder (``data_id``): replacing either needs ``--force``.
    """
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except (OSError, TypeError, ValueError):
        attrs = {}
    if "config_key" not in attrs:
        raise CacheError(f"{path} is not a featx cache, and extracting there would replace it: "
                         f"choose another `out`, or add `force=True` to replace it")
    if not fits(attrs, ATTRIBUTES):  # featx's, but damaged: made again, as it is featx's
        attrs = {}
    if attrs.get("data_id", data_id) != data_id:
        raise CacheError(f"{path} is the cache of another image folder ({attrs.get('data')}), and "
                         f"extracting there would replace it: choose another `out`, or add `force=True` "
                         f"to replace it")
    if is_complete(attrs):
        if attrs["config_key"] != identity.key(dtype):
            have = identity_of(attrs)
            key = have.mismatch(identity)
            was, now = (getattr(have, key), getattr(identity, key)) if key else (attrs["dtype"], dtype)
            log.warning("%s holds features made with %s=%s, not %s=%s: extracting every image again",
                        path, key or "dtype", was, key or "dtype", now)
            return None
        try:
            return PreviousCache(path)
        except (OSError, KeyError, ValueError, TypeError):  # damaged: made again, as it is featx's
            pass
    log.warning("%s is not a complete featx cache of format %d: extracting every image again",
                path, FORMAT_VERSION)
    return None


def _elsewhere(f: h5py.File) -> str | None:
    """What of ``f`` lives in another file: an external link, a virtual dataset, a dataset stored
    in external files. featx writes none, and reading one reads whatever file it names; None
    where all is in ``f``."""
    def outside(name: str) -> str | None:
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return f"/{name} is an external link to {link.filename!r}"
        found = f.get(name) if isinstance(link, h5py.HardLink) else None  # a soft link's target is visited
        if isinstance(found, h5py.Dataset) and found.is_virtual:
            return f"/{name} is a virtual dataset"
        if isinstance(found, h5py.Dataset) and found.external:
            return f"/{name} is stored in external files"
        return None

    return f.visit_links(outside)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise CacheError(f"cannot read {path} as HDF5 ({e}): extract it again") from e


# Reads of about this much: one chunk of a cache ``write`` made; whole chunks of any other.
BLOCK_BYTES = 1 << 20


def _file_version(f: h5py.File) -> tuple[int, int, int, int]:
    """Which file an open HDF5 file is, as the file system knows it: a cache replaced since (an
    extract finishing, which renames a new file over it) is another."""
    st = os.fstat(f.id.get_vfd_handle())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class DiskFeatures:
    """A cache's ``/features`` left on disk and read a block of rows at a time, each block whole
    HDF5 chunks, so that memory holds one block rather than all N rows. ``version``: the file
    the labels and paths were read from, so that features are never read from another."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    block_rows: int
    version: tuple[int, int, int, int] | None = None

    @classmethod
    def of(cls, path: Path, ds: h5py.Dataset) -> DiskFeatures:
        chunk = ds.chunks[0] if ds.chunks else 1
        row_bytes = max(1, ds.shape[1] * ds.dtype.itemsize)
        # Tiny chunks would make a read per few rows; round up to whole chunks of BLOCK_BYTES.
        return cls(path, ds.shape, ds.dtype, chunk * max(1, -(-BLOCK_BYTES // (chunk * row_bytes))),
                   _file_version(ds.file))

    @contextlib.contextmanager
    def _opened(self) -> Iterator[h5py.File]:
        with _reading(self.path), h5py.File(self.path, "r") as f:
            if self.version is not None and _file_version(f) != self.version:
                raise CacheError(f"{self.path} was replaced while featx read it (an extract finished "
                                 f"meanwhile): run the same command again")
            yield f

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
        with self._opened() as f:
            return f["features"][()]

    def blocks(self, rows: np.ndarray | None = None, order: Sequence[int] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, features)`` of the ``rows`` (default: all) in each block, visiting blocks
        ``order`` (block numbers; default: file order); a block with none of the rows is not read."""
        wanted = np.ones(len(self), bool)
        if rows is not None:
            wanted[:] = False
            wanted[rows] = True
        with self._opened() as f:
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
    def identity(self) -> FeatureIdentity:
        return identity_of(self.attrs)


def _check_parts(shape: tuple[int, ...], identity: FeatureIdentity, labels, n_paths: int,
                n_splits: int, n_classes: int) -> None:
    """A cache's parts agree with each other and its attributes name its features; raises
    ``ValueError`` where they do not."""
    if shape[1:] != (identity.feature_dim,):
        raise ValueError(f"its features are {shape[1:]} wide, its attributes say {identity.feature_dim}")
    labels = np.asarray(labels)
    if not len(labels) == n_paths == n_splits == shape[0]:
        raise ValueError(f"{shape[0]} feature rows, but {len(labels)} labels, {n_paths} paths and "
                         f"{n_splits} splits")
    if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):  # -1: in no class folder
        raise ValueError(f"a label out of the range of its {n_classes} classes")


def _complete(f: h5py.File) -> bool:
    try:
        return is_complete(dict(f.attrs))
    except (TypeError, ValueError):  # an attribute of a type h5py cannot read
        return False


def digests(path: str | os.PathLike) -> list[str]:
    """The sha256 of each row's image file, in the order of the rows of the cache at ``path``
    (read apart from ``open_cache``, for the few that need them)."""
    with _reading(Path(path)), h5py.File(path, "r") as f:
        try:
            found = strings(f["files/sha256"])
            if len(found) != len(f["paths"]):
                raise ValueError(f"{len(found)} digests for {len(f['paths'])} rows")
        except (KeyError, ValueError, TypeError) as e:
            raise CacheError(f"{path} is damaged ({first_line(e)}): extract it again") from e
    return found


def open_cache(path: str | os.PathLike, identity: FeatureIdentity | None = None,
               in_memory: bool = True) -> FeatureCache:
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
        if not _complete(f):
            raise CacheError(f"{path} is not a complete featx cache (format "
                             f"{FORMAT_VERSION}): extract it again")
        outside = _elsewhere(f)
        if outside:
            raise CacheError(f"{path} reads data from other files ({outside}), which no featx cache "
                             f"does: extract it again")
        try:
            check_cache(f)
            fc = FeatureCache(
                path=path, features=DiskFeatures.of(path, f["features"]), labels=f["labels"][()],
                paths=strings(f["paths"]), splits=np.array(strings(f["splits"])),
                classes=strings(f["classes"]), attrs=dict(f.attrs),
                failed=list(zip(strings(f["failed/paths"]), strings(f["failed/errors"]), strict=True)))
            _check_parts(fc.features.shape, fc.identity, fc.labels, len(fc.paths), len(fc.splits),
                        len(fc.classes))
        except Invalid as e:
            raise CacheError(f"{path} is damaged ({e}): extract it again") from e
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CacheError(f"{path} is damaged ({first_line(e)}): extract it again") from e
    key = fc.identity.mismatch(identity) if identity is not None else None
    if key is not None:
        raise CacheError(f"{path} holds features made with {key}={getattr(fc.identity, key)}, not "
                         f"the {key}={getattr(identity, key)} asked for: extract the images again "
                         f"with those settings")
    if in_memory:
        fc.features = fc.features.read()
    return fc
