"""The HDF5 feature cache's format: its layout, its default name, and what a cache holds besides
its features (``Contents``).

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
    attributes         the feature identity (backbone, weights_sha256, pool, feature_dim,
                       input_size, preprocessing as JSON), dtype, config_key, format_version,
                       complete, provenance (see ``writer.write``), the image folder (``data`` its name,
                       ``data_path`` relative to the cache, ``data_id`` a hash of its absolute path)

Strings are stored as UTF-8; a file name that is not valid UTF-8 keeps its own bytes, so it is
read back with ``errors="surrogateescape"``. A cache is only ever written whole under a temporary
name and renamed into place (``files.durable_write``), so a file named ``.h5`` is always complete;
unfinished work lives in ``NAME.h5.partial/`` (``partial``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py

from ..backbones.identity import DTYPES, IDENTITY_FIELDS, IDENTITY_REQUIRED, FeatureIdentity
from ..data.folders import Dataset
from ..util.files import size_text
from ..util.schema import Flag, Int, Invalid, JsonText, Num, Record, Text, check, fits, load_json
from . import reuse

FORMAT_VERSION = 2  # 2: /files/*, written whole; 1 had no record of the files read
STRING = h5py.string_dtype("utf-8")


def default_path(data_root: Path, identity: FeatureIdentity, dtype: str,
                 out_dir: str | os.PathLike = "cache") -> Path:
    """``cache/<dataset>-<backbone>[-<layers>]-<pool>[-float16]-<hash>.h5``; the hash covers the absolute
    dataset path and every setting that changes a feature."""
    short = hashlib.sha256(f"{data_root.resolve()}\0{identity.key(dtype)}".encode()).hexdigest()[:10]
    parts = [data_root.resolve().name, identity.backbone, identity.pool]
    if identity.layers:
        parts.insert(2, identity.layers.replace(",", "+"))
    if dtype != "float32":
        parts.append(dtype)
    return Path(out_dir) / f"{'-'.join(parts)}-{short}.h5"


def data_id(data_root: Path) -> str:
    """Which image folder a cache was made from, as a cache records it: a hash of its absolute
    path, which tells folders apart without writing down anyone's folders."""
    return hashlib.sha256(os.fsencode(data_root.resolve())).hexdigest()[:16]


def data_folder(path: Path, attrs: dict) -> Path | None:
    """The image folder the cache at ``path`` was made from, where it still is: the cache
    records it relative to itself (``data_path``), so that moving both together keeps the link
    and no one's home folder is written down; None when no folder of its name is there."""
    relative = attrs.get("data_path")
    if not relative:
        return None
    folder = (Path(path).parent / str(relative)).resolve()
    return folder if folder.is_dir() and folder.name == attrs.get("data") else None


def encoded(strings) -> list[bytes]:
    return [s.encode("utf-8", "surrogateescape") for s in strings]


def strings(ds: h5py.Dataset) -> list[str]:
    return ds.asstr(errors="surrogateescape")[()].tolist()


# The attributes ``writer.write`` and extract set, as they may be; others (a later featx's) are
# left alone.
ATTRIBUTES = Record({**IDENTITY_FIELDS, "preprocessing": JsonText(IDENTITY_FIELDS["preprocessing"]),
                     "dtype": Text(choices=DTYPES), "config_key": Text(1), "format_version": Int(),
                     "complete": Flag(), "n_images": Int(), "n_failed": Int(), "seconds": Num(0),
                     **{k: Text() for k in ("data", "data_path", "data_id", "created", "execution",
                                            "device", "decode", "featx_version", "torch_version",
                                            "torchvision_version")}},
                    required=(*IDENTITY_REQUIRED, "dtype", "config_key"))
# Each dataset of the layout: (dimensions, what its values are: HDF5 strings, or NumPy kinds).
LAYOUT = {"features": (2, "f"), "labels": (1, "iu"), "paths": (1, "text"), "splits": (1, "text"),
          "classes": (1, "text"), "files/size": (1, "iu"), "files/mtime_ns": (1, "iu"),
          "files/sha256": (1, "text"), "failed/paths": (1, "text"), "failed/errors": (1, "text")}
_KINDS = {"f": "floating-point numbers", "iu": "whole numbers", "text": "strings"}


def is_complete(attrs: dict) -> bool:
    """Whether the attributes are those of a whole cache of this format (values of a type featx
    never writes there are not)."""
    version, done = attrs.get("format_version"), attrs.get("complete")
    return fits(version, Int()) and version == FORMAT_VERSION and fits(done, Flag()) and bool(done)


def check_cache(f: h5py.File) -> None:
    """Raise ``Invalid`` naming the first attribute or dataset of ``f`` that is not as featx
    writes it: of another type or shape, or declaring more values than the file could hold (an
    HDF5 dataset may declare any size and store none of it; featx's are stored whole, uncompressed)."""
    try:
        attrs = dict(f.attrs)
    except (OSError, TypeError, ValueError) as e:  # an attribute of a type h5py cannot read
        raise Invalid("its attributes", f"cannot be read ({str(e).splitlines()[0][:80]})") from None
    check(attrs, ATTRIBUTES, "attribute")
    room = os.fstat(f.id.get_vfd_handle()).st_size
    for name, (dims, kind) in LAYOUT.items():
        where = f"/{name}"
        try:
            found = f.get(name)
        except (KeyError, TypeError, ValueError):  # a part of its path that is no group
            found = None
        if not isinstance(found, h5py.Dataset):
            raise Invalid(where, "is missing" if found is None else "is not a dataset")
        shape = found.shape or ()
        text = h5py.check_string_dtype(found.dtype) is not None
        if len(shape) != dims or text != (kind == "text") or (not text and found.dtype.kind not in kind):
            raise Invalid(where, f"holds {found.dtype} of shape {shape}, not {_KINDS[kind]} in "
                                 f"{dims} dimension{'s' if dims > 1 else ''}")
        declared = math.prod(shape) * found.id.get_type().get_size()
        if declared > room:
            raise Invalid(where, f"declares {size_text(declared)} of values, more than the file's "
                                 f"{size_text(room)} holds")


def identity_of(attrs: dict) -> FeatureIdentity:
    """The feature identity a cache's attributes hold (checked: ``check_cache``)."""
    return FeatureIdentity.from_dict({**attrs, "preprocessing": load_json(attrs["preprocessing"])})


def identity_attrs(identity: FeatureIdentity) -> dict:
    """The feature identity as cache attributes (HDF5 has no nested ones: preprocessing as JSON)."""
    d = identity.to_dict()
    return {**d, "preprocessing": json.dumps(d["preprocessing"])}


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
        """The contents for ``dataset`` with each image either found (its row) or failed; the
        rows of its manifest not used are kept with the failed images, as what the cache lacks."""
        rows = [dataset.samples[i] for i in sorted(found)]
        return cls(classes=dataset.classes, paths=tuple(s.path.as_posix() for s in rows),
                   labels=tuple(s.label for s in rows), splits=tuple(s.split for s in rows),
                   size=tuple(s.size for s in rows), mtime_ns=tuple(s.mtime_ns for s in rows),
                   sha256=tuple(found[i].sha256 for i in sorted(found)),
                   failed=tuple((dataset.samples[i].path.as_posix(), err)
                                for i, err in sorted(failed.items())) + dataset.refused)

    @classmethod
    def read(cls, f: h5py.File) -> Contents:
        return cls(classes=tuple(strings(f["classes"])), paths=tuple(strings(f["paths"])),
                   labels=tuple(f["labels"][()].tolist()), splits=tuple(strings(f["splits"])),
                   size=tuple(f["files/size"][()].tolist()),
                   mtime_ns=tuple(f["files/mtime_ns"][()].tolist()),
                   sha256=tuple(strings(f["files/sha256"])),
                   failed=tuple(zip(strings(f["failed/paths"]), strings(f["failed/errors"]),
                                    strict=True)))
