"""The HDF5 feature cache: its name, its layout, writing it safely, and reading it back.

Layout (all datasets have one row per successfully read image, in the same order):

    /features        N × D float32 (or float16), chunked by rows
    /labels          N int32, index into /classes
    /paths           N str, relative to the dataset root
    /splits          N str, "train" | "val" | "test"
    /classes         C str
    /failed/paths    str, images that could not be read
    /failed/errors   str, why
    attributes       backbone, weights_sha256, preprocessing (JSON), pool, feature_dim, ... (see
                     ``CacheWriter``)

A cache is written to ``NAME.h5.partial`` and renamed into place only when complete, so a file
named ``.h5`` is always whole.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .data import Dataset, Sample
from .errors import CacheError

FORMAT_VERSION = 1
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


def _versions() -> dict:
    import torch
    import torchvision

    return dict(featx_version=__version__, torch_version=str(torch.__version__),
                torchvision_version=str(torchvision.__version__))


def _append(ds: h5py.Dataset, values) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


class CacheWriter:
    """Streams features into ``path.partial`` batch by batch; ``commit`` renames it into place."""

    def __init__(self, path: Path, dataset: Dataset, identity: dict, dtype: str):
        if dtype not in DTYPES:
            raise CacheError(f"unknown feature dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.path, self.dataset = Path(path), dataset
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.partial, "w")
        dim = identity["feature_dim"]
        rows = max(1, min(len(dataset.samples), (1 << 20) // (dim * np.dtype(dtype).itemsize)))
        self.features = self.f.create_dataset("features", (0, dim), dtype=dtype,
                                              maxshape=(None, dim), chunks=(rows, dim))
        self.labels = self._growing("labels", "int32")
        self.paths = self._growing("paths", _STR)
        self.splits = self._growing("splits", _STR)
        self.failed_paths = self._growing("failed/paths", _STR)
        self.failed_errors = self._growing("failed/errors", _STR)
        self.f.create_dataset("classes", data=list(dataset.classes), dtype=_STR)
        attrs = {k: v for k, v in identity.items() if k != "preprocessing"}
        self.f.attrs.update(dict(
            attrs, format_version=FORMAT_VERSION, preprocessing=json.dumps(identity["preprocessing"]),
            dtype=dtype, config_key=config_key(identity, dtype),
            data_root=str(dataset.root.resolve()), data_fingerprint=dataset.fingerprint(),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            complete=False, **_versions()))

    def _growing(self, name: str, dtype) -> h5py.Dataset:
        return self.f.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(4096,))

    def write(self, samples: list[Sample], features: np.ndarray) -> None:
        _append(self.features, features)
        _append(self.labels, [s.label for s in samples])
        _append(self.paths, [s.path.as_posix() for s in samples])
        _append(self.splits, [s.split for s in samples])

    def fail(self, samples: list[Sample], errors: list[str]) -> None:
        _append(self.failed_paths, [s.path.as_posix() for s in samples])
        _append(self.failed_errors, errors)

    def commit(self, **attrs) -> Path:
        self.f.attrs.update(dict(attrs, complete=True, n_images=self.features.shape[0],
                                 n_failed=self.failed_paths.shape[0]))
        self.f.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without committing: the ``.partial`` file keeps what was written."""
        if self.f.id.valid:
            self.f.close()


def read_attrs(path: Path) -> dict | None:
    """The attributes of a complete cache at ``path``, or None if there is none there."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs) if f.attrs.get("complete") else None
    except (OSError, FileNotFoundError):
        return None


@dataclass
class FeatureCache:
    """A cache read into memory: the arrays, and the attributes that describe them."""

    path: Path
    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    splits: np.ndarray
    classes: list[str]
    attrs: dict
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def identity(self) -> dict:
        a = self.attrs
        return dict(backbone=a["backbone"], weights_sha256=a["weights_sha256"],
                    weights_path=a.get("weights_path", ""), pool=a["pool"],
                    feature_dim=int(a["feature_dim"]), input_size=int(a["input_size"]),
                    preprocessing=json.loads(a["preprocessing"]))


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else s for s in ds.asstr()[()]]


def open_cache(path: str | os.PathLike) -> FeatureCache:
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (f" ({partial} is an unfinished extraction: run featx extract again)"
                if partial.exists() else ": run `featx extract DATA` first; it prints the path")
        raise CacheError(f"no feature cache at {path}{hint}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format_version") != FORMAT_VERSION or not f.attrs.get("complete"):
                raise CacheError(f"{path} is not a complete featx cache (format "
                                 f"{FORMAT_VERSION}): extract it again")
            return FeatureCache(
                path=path, features=f["features"][()], labels=f["labels"][()],
                paths=_strings(f["paths"]), splits=np.array(_strings(f["splits"])),
                classes=_strings(f["classes"]), attrs=dict(f.attrs),
                failed=list(zip(_strings(f["failed/paths"]), _strings(f["failed/errors"]),
                                strict=True)))
    except OSError as e:
        raise CacheError(f"cannot read {path} as HDF5 ({e}): extract it again") from e
