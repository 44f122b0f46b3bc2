"""What every stage reports and holds out: the metrics per split, and the split of the training
images into train and validation (and a hash that says which image went where)."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

from .data.folders import SPLITS
from .errors import ConfigError, DataError


def metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict:
    """Number of images, accuracy and log loss: the figures every stage reports per split."""
    return dict(n=len(y), accuracy=float(accuracy_score(y, proba.argmax(1))),
                loss=float(log_loss(y, proba, labels=range(n_classes))))


def split_digest(paths: list[str], parts: dict[str, np.ndarray]) -> str:
    """Which image went to which split, as one hash: kept in the bundle, so that fine-tuning can
    tell whether it holds out the very images the head was validated on."""
    assigned = sorted(f"{paths[i]}\t{name}" for name, idx in parts.items() for i in idx)
    return hashlib.sha256("\n".join(assigned).encode("utf-8", "surrogateescape")).hexdigest()


def split_indices(splits: np.ndarray, labels: np.ndarray, val_split: float, seed: int
                  ) -> dict[str, np.ndarray]:
    """Row indices per split: the data's own, with a seeded stratified ``val_split`` of train
    held out for validation when the data has no val split."""
    parts = {name: np.flatnonzero(splits == name) for name in SPLITS}
    if len(parts["val"]) == 0 and val_split > 0:
        if not 0 < val_split < 1:
            raise ConfigError(f"--val-split must be between 0 and 1, not {val_split}")
        counts = np.bincount(labels[parts["train"]])
        if counts[counts > 0].min() < 2:
            raise DataError("a class has a single training image, too few to hold one out for "
                            "validation: add images, or pass --val-split 0 to skip validation")
        parts["train"], parts["val"] = train_test_split(
            parts["train"], test_size=val_split, random_state=seed,
            stratify=labels[parts["train"]])
    return {k: v for k, v in parts.items() if len(v)}
