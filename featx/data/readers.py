"""Readers: the image files of a dataset read inside DataLoader workers, a bad file becoming a
record rather than an error, and the batches they are collated into.

Every reader shares one rule: item ``i`` is ``(i, what was read, sha256 of the file, None)``, or
``(i, None, "", why)`` for a file that cannot be used, so one bad image never stops a run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .images import error_line, read_image

Item = tuple[int, Any, str, "str | None"]


class Reader(torch.utils.data.Dataset):
    """The files ``paths`` (relative to ``root``), read by ``read``; a subclass says how."""

    def __init__(self, root: Path, paths: list[Path]):
        self.root, self.paths = root, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            found, digest = self.read(i, self.root / self.paths[i])
            return i, found, digest, None
        except Exception as e:  # any undecodable file is recorded and skipped, never fatal
            return i, None, "", error_line(e)

    def read(self, i: int, path: Path) -> tuple[Any, str]:
        """What the model side needs of file ``i``, and the sha256 of its bytes; raises for a
        file that cannot be used, ``error_line`` of the exception being the reason recorded."""
        raise NotImplementedError


class ImageReader(Reader):
    """Decoded images as uint8 tensors. ``transform`` makes the tensor: ``Preprocessing.crop`` for
    features, a random augmentation for fine-tuning. With ``seed``, image ``i``'s random draws
    are seeded by ``seed + i`` alone, whichever worker process reads it. ``shorter``: the size
    ``transform`` resizes the shorter side to, which a large JPEG is decoded no smaller than
    (``images.load_rgb``); None for a transform that may keep every pixel."""

    def __init__(self, root: Path, paths: list[Path], transform: Callable[[Image.Image], torch.Tensor],
                 seed: int | None = None, shorter: int | None = None):
        super().__init__(root, paths)
        self.transform, self.seed, self.shorter = transform, seed, shorter

    def read(self, i: int, path: Path) -> tuple[torch.Tensor, str]:
        image, digest = read_image(path, self.shorter)
        if self.seed is None:
            return self.transform(image), digest
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + i)
            return self.transform(image), digest


def sort_items(items: list[Item]) -> tuple[list[tuple[int, Any, str]], list[tuple[int, str]]]:
    """``(index, what was read, sha256)`` of the items read, and ``(index, why)`` of the rest."""
    return ([(i, found, d) for i, found, d, _ in items if found is not None],
            [(i, err) for i, found, _, err in items if found is None])


@dataclass
class ReadBatch:
    """What every batch says of its files; a subclass adds what was read of them."""

    indices: list[int]          # into the reader's paths, of the files read
    digests: list[str]          # sha256 of each file in indices
    failed: list[tuple[int, str]]  # (index, why) of the files that could not be used

    def pin_memory(self) -> ReadBatch:
        """Page-lock every tensor, as the DataLoader asks of a batch bound for a GPU."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.pin_memory())
        return self


@dataclass
class Batch(ReadBatch):
    images: torch.Tensor | None = None  # uint8 N×3×S×S, one per index; None when none was read


def collate(items: list[Item]) -> Batch:
    ok, failed = sort_items(items)
    return Batch(indices=[i for i, _, _ in ok], digests=[d for _, _, d in ok], failed=failed,
                 images=torch.stack([t for _, t, _ in ok]) if ok else None)
