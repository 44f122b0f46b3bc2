"""Writing a cache whole: rows gathered from wherever they were found (the previous cache, shards
of an interrupted run, or arrays a user computed elsewhere), under a temporary name, then renamed."""

from __future__ import annotations

import datetime
import errno
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from ..backbones.identity import DTYPES, FeatureIdentity, storage_dtype
from ..data.folders import SPLITS
from ..errors import ConfigError
from ..util.files import durable_write, size_text
from ..version import __version__
from . import reuse
from .format import FORMAT_VERSION, STRING, Contents, encoded, identity_attrs


def _versions() -> dict:
    import torch
    import torchvision

    return dict(featx_version=__version__, torch_version=str(torch.__version__),
                torchvision_version=str(torchvision.__version__))


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


def _room_needed(contents: Contents, dim: int, itemsize: int) -> int:
    """A generous estimate of the bytes a cache of ``contents`` takes: the features, each
    string with HDF5's 16 bytes to point at it, the numbers, and a MiB of metadata."""
    strings = sum(len(s.encode("utf-8", "surrogateescape")) + 16 for s in
                  (*contents.paths, *contents.splits, *contents.sha256, *contents.classes,
                   *(p + e for p, e in contents.failed)))
    return int(1.05 * (len(contents.paths) * (dim * itemsize + 20) + strings)) + (1 << 20)


def write(path: Path, contents: Contents, placed: list[reuse.Found], identity: FeatureIdentity,
          dtype: str, tmp: Path, **attrs) -> Path:
    """Write the cache at ``path`` whole: rows in ``contents`` order, features from ``placed``.

    Refused with ``OSError`` (ENOSPC) before anything is written if the disk has not room for
    it: HDF5 finds a full disk only as it closes the file, and then cannot close it cleanly.
    """
    dim = identity.feature_dim
    stored = storage_dtype(dtype)
    need, free = _room_needed(contents, dim, np.dtype(stored).itemsize), shutil.disk_usage(tmp.parent).free
    if need > free:
        raise OSError(errno.ENOSPC, f"No space left on device: about {size_text(need)} needed, "
                                    f"{size_text(free)} free", str(tmp.parent))
    with durable_write(path, tmp), h5py.File(tmp, "w") as f:
        rows = max(1, (1 << 20) // (dim * np.dtype(stored).itemsize))
        features = f.create_dataset("features", (len(placed), dim), dtype=stored,
                                    maxshape=(None, dim), chunks=(rows, dim))
        _copy_features(features, placed)
        f.create_dataset("labels", data=np.array(contents.labels, np.int32))
        for name, values in [("paths", contents.paths), ("splits", contents.splits),
                             ("classes", contents.classes), ("files/sha256", contents.sha256),
                             ("failed/paths", [p for p, _ in contents.failed]),
                             ("failed/errors", [e for _, e in contents.failed])]:
            f.create_dataset(name, data=encoded(values), dtype=STRING, shape=(len(values),))
        f.create_dataset("files/size", data=np.array(contents.size, np.int64))
        f.create_dataset("files/mtime_ns", data=np.array(contents.mtime_ns, np.int64))
        f.attrs.update(dict(
            identity_attrs(identity), dtype=dtype, config_key=identity.key(dtype),
            format_version=FORMAT_VERSION,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            n_images=len(contents.paths), n_failed=len(contents.failed), complete=True,
            **_versions(), **attrs))
    return path


class _Rows:
    """Rows of an array, or of anything sliced like one (a memmap, an h5py dataset, rows made on
    demand), as a ``reuse.Source``."""

    entries: dict[str, reuse.Entry] = {}  # noqa: RUF012 (never looked up: every row is placed)

    def __init__(self, features):
        self.array = features

    def features(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])


def write_cache(path: str | os.PathLike, features, labels, classes: list[str], *,
                paths: list[str] | None = None, splits: list[str] | None = None,
                identity: FeatureIdentity | None = None, dtype: str = "float32") -> Path:
    """Write features computed elsewhere as a featx cache, which ``fit_head`` reads like any other.

    ``features``: N × D, an array or anything sliced like one (``features[a:b]``) with a
    ``shape``; it is read about 64 MiB at a time, so it need not fit in memory. ``labels``: N
    indices into ``classes``. ``paths``: a name per row (default ``row-0000000``…); ``splits``:
    "train", "val" or "test" per row (default all train). ``identity``: what the features are
    (default: an "external" backbone, so that a bundle fitted on them cannot score images).
    """
    n, dim = (int(v) for v in features.shape)
    labels = np.asarray(labels)
    paths = paths if paths is not None else [f"row-{i:07d}" for i in range(n)]
    splits = splits if splits is not None else ["train"] * n
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if not len(labels) == len(paths) == len(splits) == n:
        raise ConfigError(f"{n} feature rows, but {len(labels)} labels, {len(paths)} paths and "
                          f"{len(splits)} splits: give one of each per row")
    if set(splits) - set(SPLITS):
        raise ConfigError(f"unknown split(s) {', '.join(sorted(set(splits) - set(SPLITS)))}: "
                          f"each row's split is one of {', '.join(SPLITS)}")
    if n and not 0 <= labels.min() <= labels.max() < len(classes):
        raise ConfigError(f"labels must index the {len(classes)} classes, 0 to {len(classes) - 1}")
    identity = identity or FeatureIdentity(backbone="external", weights_sha256="unknown", pool="avg",
                                           feature_dim=dim, input_size=0, preprocessing={})
    if identity.feature_dim != dim:
        raise ConfigError(f"the identity says {identity.feature_dim} features a row, the array has {dim}")
    contents = Contents(classes=tuple(classes), paths=tuple(paths), labels=tuple(labels.tolist()),
                        splits=tuple(splits), size=(0,) * n, mtime_ns=(0,) * n, sha256=("",) * n,
                        failed=())
    source, path = _Rows(features), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, contents, [reuse.Found(source, i, "") for i in range(n)], identity, dtype,
                 path.with_name(path.name + ".tmp"))
