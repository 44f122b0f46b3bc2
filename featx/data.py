"""Image folders: finding the images, their classes and splits, and decoding them safely.

A labelled folder holds one subfolder per class. If it holds ``train/``, ``val/`` (or
``validation/``) and/or ``test/``, those are the splits, each with the same class subfolders;
otherwise every image is in ``train`` and fit-head carves a validation split from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path  # relative to the dataset root
    label: int  # index into the dataset's classes; -1 when unknown
    split: str


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]

    def fingerprint(self) -> str:
        """Changes whenever an image is added, removed, renamed, relabelled or rewritten."""
        h = hashlib.sha256("\0".join(self.classes).encode())
        for s in self.samples:
            st = os.stat(self.root / s.path)
            h.update(f"\0{s.path.as_posix()}\0{s.label}\0{s.split}\0{st.st_size}\0{st.st_mtime_ns}"
                     .encode("utf-8", "surrogateescape"))
        return h.hexdigest()

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


def find_images(folder: Path) -> list[Path]:
    """Every image file below ``folder``, recursively, sorted, as paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found.extend(rel / f for f in sorted(filenames) if not f.startswith(".") and is_image(Path(f)))
    return found


def scan(root: str | os.PathLike) -> Dataset:
    """Read a labelled image folder's layout without opening any image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder that holds one subfolder per class")
    subdirs = _subdirs(root)
    split_dirs = [(d, SPLIT_DIRS[d]) for d in subdirs if d in SPLIT_DIRS]
    if len({split for _, split in split_dirs}) < len(split_dirs):
        raise DataError(f"{root} has both val/ and validation/: keep one of them")
    # (folder relative to root, split) pairs, each holding one subfolder per class.
    parts = [(Path(d), split) for d, split in split_dirs] or [(Path("."), "train")]
    if split_dirs and len(split_dirs) < len(subdirs):
        others = [d for d in subdirs if d not in SPLIT_DIRS]
        log.warning("%s: ignoring %s beside the split folders", root, ", ".join(others))

    per_class: dict[str, list[tuple[Path, str]]] = {}
    for part, split in parts:
        for cls in _subdirs(root / part):
            for rel in find_images(root / part / cls):
                per_class.setdefault(cls, []).append((part / cls / rel, split))
        if not _subdirs(root / part) and find_images(root / part):
            raise DataError(f"{root / part} holds images but no class subfolders: put each class's "
                            f"images in its own subfolder, e.g. {root / part}/cats/, {root / part}/dogs/")
    if not per_class:
        raise DataError(f"no images found in {root}: featx reads "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))} files in one subfolder per class")
    classes = tuple(sorted(per_class))
    samples = tuple(Sample(path, label, split) for label, cls in enumerate(classes)
                    for path, split in per_class[cls])
    order = {split: i for i, split in enumerate(SPLITS)}
    samples = tuple(sorted(samples, key=lambda s: (order[s.split], s.path)))
    return Dataset(root=root, classes=classes, samples=samples)


def scan_unlabelled(folder: str | os.PathLike, classes: tuple[str, ...] = ()) -> Dataset:
    """Every image below ``folder``; labelled where its first subfolder is one of ``classes``
    (or its second, below a split folder such as ``val/``, so a whole dataset can be scored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give a folder of images to score")
    index = {c: i for i, c in enumerate(classes)}

    def label(p: Path) -> int:
        dirs = p.parts[:-1]
        if dirs and dirs[0] in SPLIT_DIRS and dirs[0] not in index:
            dirs = dirs[1:]
        return index.get(dirs[0], -1) if dirs else -1

    samples = tuple(Sample(p, label(p), "") for p in find_images(folder))
    if not samples:
        raise DataError(f"no images found in {folder} (looked for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))} in any letter case)")
    return Dataset(root=folder, classes=tuple(classes), samples=samples)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode any supported image to 8-bit RGB, upright as its EXIF orientation says.

    PIL's decompression-bomb warning becomes an error, so a huge declared size is a skipped file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.seek(0)  # first frame of an animation
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale: PIL's convert("RGB") would clip instead of scaling down.
                a = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((a / max(a.max(), 1.0) * 255).astype(np.uint8), "L")
            return im.convert("RGB")


class ImageReader(torch.utils.data.Dataset):
    """Yields (index, uint8 tensor or None, error or None); runs inside DataLoader workers.

    ``transform`` turns the decoded image into the uint8 tensor: ``Preprocessing.crop`` for
    features, a random augmentation for fine-tuning.
    """

    def __init__(self, root: Path, paths: list[Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(load_rgb(self.root / self.paths[i])), None
        except Exception as e:  # any undecodable file is recorded and skipped, never fatal
            return i, None, f"{type(e).__name__}: {e}".splitlines()[0]


@dataclass
class Batch:
    indices: list[int]
    images: torch.Tensor | None
    failed: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    ok = [(i, t) for i, t, _ in items if t is not None]
    return Batch(indices=[i for i, _ in ok],
                 images=torch.stack([t for _, t in ok]) if ok else None,
                 failed=[(i, err) for i, t, err in items if t is None])
