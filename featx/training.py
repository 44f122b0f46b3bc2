"""Stage two: fit a head on a feature cache, evaluate it on each split, and write a model bundle."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
from sklearn.model_selection import train_test_split

from .bundle import Bundle
from .cache import open_cache
from .errors import ConfigError, DataError
from .heads import make_head
from .plots import confusion_matrix_png


@dataclass
class FitResult:
    bundle: Path
    metrics: dict        # split -> {"n", "accuracy", "loss"}
    seconds: float
    plot: Path | None

    def summary(self) -> str:
        lines = [f"{split:5s}  n={m['n']:<6d} accuracy={m['accuracy']:.4f}  loss={m['loss']:.4f}"
                 for split, m in self.metrics.items()]
        return "\n".join([*lines, f"fitted in {self.seconds:.1f} s -> {self.bundle}"])


def metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict:
    """Number of images, accuracy and log loss: the figures every stage reports per split."""
    return dict(n=len(y), accuracy=float(accuracy_score(y, proba.argmax(1))),
                loss=float(log_loss(y, proba, labels=range(n_classes))))


def evaluate(bundle: Bundle, X: np.ndarray, y: np.ndarray) -> dict:
    return metrics(y, bundle.predict_proba(X), len(bundle.classes))


def split_digest(paths: list[str], parts: dict[str, np.ndarray]) -> str:
    """Which image went to which split, as one hash: kept in the bundle, so that fine-tuning can
    tell whether it holds out the very images the head was validated on."""
    assigned = sorted(f"{paths[i]}\t{name}" for name, idx in parts.items() for i in idx)
    return hashlib.sha256("\n".join(assigned).encode("utf-8", "surrogateescape")).hexdigest()


def split_indices(splits: np.ndarray, labels: np.ndarray, val_split: float, seed: int
                   ) -> dict[str, np.ndarray]:
    parts = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
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


def fit_head(cache: str | os.PathLike, model: str = "logistic", params: dict | None = None,
             val_split: float = 0.2, seed: int = 0, out: str | os.PathLike | None = None
             ) -> FitResult:
    """Fit head ``model`` on the cache's train split and write a bundle (default: beside the cache).

    Validation uses the cache's ``val`` split, else a seeded stratified ``val_split`` of train;
    the ``test`` split, when present, is only evaluated.
    """
    start = time.perf_counter()
    fc = open_cache(cache)
    head = make_head(model, **(params or {}))
    parts = split_indices(fc.splits, fc.labels, val_split, seed)
    train = parts.get("train", np.array([], int))
    present = np.unique(fc.labels[train])
    if len(present) < 2:
        raise DataError(f"{fc.path}: the training data has {len(present)} class(es); a classifier "
                        f"needs at least two class subfolders with images")
    missing = sorted(set(range(len(fc.classes))) - set(present.tolist()))
    if missing:
        raise DataError(f"{fc.path}: no training images for class(es) "
                        f"{', '.join(fc.classes[i] for i in missing)}: add some to train/")
    head.fit(fc.features[train], fc.labels[train])
    bundle = Bundle(identity=fc.identity, classes=fc.classes, head=head, model=model,
                    info=dict(cache=str(Path(fc.path).resolve()), params=params or {},
                              val_split=val_split if "val" not in fc.splits else None, seed=seed,
                              split_sha256=split_digest(fc.paths, parts)))
    bundle.metrics = {split: evaluate(bundle, fc.features[idx], fc.labels[idx])
                      for split, idx in parts.items()}
    path = Path(out) if out else Path(fc.path).with_suffix(f".{model}")
    bundle.save(path)
    shown = "val" if "val" in parts else "train"
    idx = parts[shown]
    matrix = confusion_matrix(fc.labels[idx], bundle.predict_proba(fc.features[idx]).argmax(1),
                              labels=range(len(fc.classes)))
    plot = confusion_matrix_png(matrix, fc.classes, path / f"confusion_{shown}.png",
                                f"{model} on {fc.attrs['backbone']}: {shown} "
                                f"accuracy {bundle.metrics[shown]['accuracy']:.3f}")
    return FitResult(path, bundle.metrics, time.perf_counter() - start, plot)
