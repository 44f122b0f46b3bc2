"""Image folders: finding the images, their classes and splits, without opening any (no torch).

A labelled folder holds one subfolder per class. If it holds ``train/``, ``val/`` (or
``validation/``) and/or ``test/``, those are the splits, each with the same class subfolders;
otherwise every image is in ``train`` and fit-head carves a validation split from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLITS = ("train", "val", "test")
# How a count names images of no split, and images of no class.
UNSPLIT, UNLABELLED = "images", "(no class)"


@dataclass(frozen=True)
class Sample:
    path: Path  # relative to the dataset root
    label: int  # index into the dataset's classes; -1 when unknown
    split: str
    size: int = -1      # bytes and modification time when scanned; -1 if the file could not be
    mtime_ns: int = -1  # stat'ed (a broken link or a loop), and the reader will say why


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    ignored: tuple[tuple[str, str], ...] = ()  # (path relative to root, why) the scan passed over
    refused: tuple[tuple[str, str], ...] = ()  # (what, why) for each row of a manifest not used

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The same dataset with only the samples at ``indices``, in that order."""
        return dataclasses.replace(self, samples=tuple(self.samples[i] for i in indices))

    def split_counts(self) -> dict[str, int]:
        splits = [s.split for s in self.samples]
        return {name: splits.count(name) for name in SPLITS if name in splits}


def _visible(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _subdirs(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return [e.name for e in _visible(list(it)) if e.is_dir()]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _entries(folder: str) -> tuple[list[str], list[str]]:
    """The names in ``folder``: its folders (links to folders included) and its other files."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for e in it:
            try:
                is_dir = e.is_dir()
            except OSError:  # as os.walk takes it: a file
                is_dir = False
            (dirs if is_dir else files).append(e.name)
    return dirs, files


def find_images(folder: Path, ignored: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every image file below ``folder``, recursively, sorted, as paths relative to it.

    Linked folders are followed, but each real folder is read once, so a symlink loop ends
    there. Folders passed over are appended to ``ignored`` as (path, why). The walk keeps its own
    stack, as os.walk recurses (before Python 3.12) and a folder 1,100 levels deep exhausted it.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    ignored = [] if ignored is None else ignored
    stack = [str(folder)]
    while stack:
        dirpath = stack.pop()
        try:
            st = os.stat(dirpath)
            dirnames, filenames = _entries(dirpath)
        except OSError as e:
            ignored.append((Path(e.filename or dirpath), f"cannot be read ({e.strerror}): skipped"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            ignored.append((Path(dirpath), "links back to a folder already read (a symlink loop): "
                                           "not read again"))
            continue
        seen.add((st.st_dev, st.st_ino))
        # Pushed last first, so that folders are read in name order, each before its neighbours.
        stack += [os.path.join(dirpath, d) for d in sorted(dirnames, reverse=True) if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder)
        found.extend(rel / f for f in sorted(filenames) if not f.startswith(".") and is_image(Path(f)))
    return found


def sample(root: Path, path: Path, label: int, split: str) -> Sample:
    try:
        st = os.stat(root / path)
    except OSError:
        return Sample(path, label, split)
    return Sample(path, label, split, st.st_size, st.st_mtime_ns)


def _passed_over(root: Path, ignored: list[tuple[Path, str]]) -> tuple[tuple[str, str], ...]:
    """Warn of each folder the scan passes over; return them relative to ``root``."""
    for path, why in ignored:
        log.warning("%s: %s", path, why)
    return tuple((path.relative_to(root).as_posix(), why) for path, why in ignored)


def _linked_class(path: Path, class_dirs: dict[Path, str], cls: str) -> str | None:
    """The other class whose folder the symlink ``path`` points into, if it does."""
    if not path.is_symlink():
        return None
    real = Path(os.path.realpath(path))  # not resolve(): a link to itself is a bad file, not an error
    return next((c for d, c in class_dirs.items() if c != cls and real.is_relative_to(d)), None)


def named(folder: str | os.PathLike) -> Path:
    """``folder`` as a path; an empty name is refused, where ``Path("")`` would be the current
    folder and a run would quietly take in whatever is there."""
    if not os.fspath(folder):
        raise DataError("an empty name is no folder: give the image folder's path ('.' for this one)")
    return Path(folder)


def scan(root: str | os.PathLike) -> Dataset:
    """Read a labelled image folder's layout without opening any image."""
    root = named(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder that holds one subfolder per class")
    subdirs = _subdirs(root)
    split_dirs = [(d, SPLIT_DIRS[d]) for d in subdirs if d in SPLIT_DIRS]
    if len({split for _, split in split_dirs}) < len(split_dirs):
        raise DataError(f"{root} has both val/ and validation/: keep one of them")
    # (folder relative to root, split) pairs, each holding one subfolder per class.
    parts = [(Path(d), split) for d, split in split_dirs] or [(Path("."), "train")]
    ignored = [(root / d, "not a split folder, beside train/ val/ test/: ignored")
               for d in subdirs if split_dirs and d not in SPLIT_DIRS]

    per_class: dict[str, list[tuple[Path, str]]] = {}
    class_dirs = {(root / part / cls).resolve(): cls for part, _ in parts for cls in _subdirs(root / part)}
    for part, split in parts:
        for cls in _subdirs(root / part):
            images = find_images(root / part / cls, ignored)
            if not images:
                ignored.append((root / part / cls, "an empty class folder: ignored"))
            for rel in images:
                other = _linked_class(root / part / cls / rel, class_dirs, cls)
                if other is not None:
                    ignored.append((root / part / cls / rel, f"a link to an image of class {other}: "
                                                             f"skipped, as its class is ambiguous"))
                    continue
                per_class.setdefault(cls, []).append((part / cls / rel, split))
        if not _subdirs(root / part) and find_images(root / part):
            raise DataError(f"{root / part} holds images but no class subfolders: put each class's "
                            f"images in its own subfolder, e.g. {root / part}/cats/, {root / part}/dogs/")
    if not per_class:
        raise DataError(f"no images found in {root}: featx reads "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))} files in one subfolder per class")
    classes = tuple(sorted(per_class))
    samples = tuple(sample(root, path, label, split) for label, cls in enumerate(classes)
                    for path, split in per_class[cls])
    order = {split: i for i, split in enumerate(SPLITS)}
    samples = tuple(sorted(samples, key=lambda s: (order[s.split], s.path)))
    return Dataset(root=root, classes=classes, samples=samples, ignored=_passed_over(root, ignored))


def scan_unlabelled(folder: str | os.PathLike, classes: tuple[str, ...] = ()) -> Dataset:
    """Every image below ``folder``; labelled where its first subfolder is one of ``classes``
    (or its second, below a split folder such as ``val/``, so a whole dataset can be scored)."""
    folder = named(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give a folder of images to score")
    index = {c: i for i, c in enumerate(classes)}

    def label(p: Path) -> int:
        dirs = p.parts[:-1]
        if dirs and dirs[0] in SPLIT_DIRS and dirs[0] not in index:
            dirs = dirs[1:]
        return index.get(dirs[0], -1) if dirs else -1

    ignored: list[tuple[Path, str]] = []
    samples = tuple(sample(folder, p, label(p), "") for p in find_images(folder, ignored))
    if not samples:
        raise DataError(f"no images found in {folder} (looked for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))} in any letter case)")
    return Dataset(root=folder, classes=tuple(classes), samples=samples,
                   ignored=_passed_over(folder, ignored))
