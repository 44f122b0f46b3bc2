"""Stage two: fit a head on a feature cache, evaluate it on each split, and write a model bundle.

A cache whose features fit the memory budget is read whole; a larger one is streamed from disk a
block of rows at a time, to the heads that can learn that way (the torch heads, by ``partial_fit``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .bundle import Bundle
from .cache import DiskFeatures, open_cache
from .errors import ConfigError, DataError
from .heads import TorchHead, make_head
from .plots import confusion_matrix_png

log = logging.getLogger(__name__)

MAX_MEMORY = 1 << 30
# A streamed epoch over a large cache is already many steps: 160,000 rows make 625 minibatches,
# where 100 epochs over a few thousand images (the in-memory default) make about 1,500.
STREAM_EPOCHS = 10
# Fewer blocks in a streamed batch would leave its minibatches a few classes, whatever the budget.
MIN_BATCH_BLOCKS = 16


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


def size_text(n: int) -> str:
    """Bytes as people read them: ``1.53 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _batches(features: np.ndarray | DiskFeatures, rows: np.ndarray, size: int,
             rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows, features)`` in batches of about ``size`` rows: from memory, in order; from disk,
    gathered from whole blocks, in file order, or with ``rng`` in a random order of blocks (a
    cache is sorted by class: neighbouring blocks would give a batch of few classes)."""
    if isinstance(features, np.ndarray):
        for i in range(0, len(rows), size):
            yield rows[i:i + size], features[rows[i:i + size]]
        return
    held: list[tuple[np.ndarray, np.ndarray]] = []
    n = 0
    for block in features.blocks(rows, None if rng is None else rng.permutation(features.n_blocks)):
        held.append(block)
        n += len(block[0])
        if n >= size:
            yield _joined(held)
            held, n = [], 0
    if held:
        yield _joined(held)


def _joined(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    # In file order: partial_fit shuffles anyway, and a batch holding all of train then trains
    # exactly as fit does on it.
    blocks = sorted(blocks, key=lambda b: b[0][0])
    return np.concatenate([i for i, _ in blocks]), np.concatenate([X for _, X in blocks])


def _evaluate(bundle: Bundle, features: np.ndarray | DiskFeatures, labels: np.ndarray,
              parts: dict[str, np.ndarray], batch_rows: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics and confusion matrix per split, summed over batches."""
    n_classes = len(bundle.classes)
    split_of = np.full(len(labels), -1)
    for k, idx in enumerate(parts.values()):
        split_of[idx] = k
    loss = np.zeros(len(parts))
    confusion = np.zeros((len(parts), n_classes, n_classes), np.int64)
    for idx, X in _batches(features, np.flatnonzero(split_of >= 0), batch_rows):
        proba, y, k = bundle.predict_proba(X), labels[idx], split_of[idx]
        for s in np.unique(k):
            sel = k == s
            loss[s] += log_loss(y[sel], proba[sel], labels=range(n_classes), normalize=False)
            confusion[s] += confusion_matrix(y[sel], proba[sel].argmax(1), labels=range(n_classes))
    n = confusion.sum((1, 2))
    found = {name: dict(n=int(n[k]), accuracy=float(np.trace(confusion[k]) / n[k]),
                        loss=float(loss[k] / n[k])) for k, name in enumerate(parts)}
    return found, dict(zip(parts, confusion, strict=True))


def _fit_streamed(head: TorchHead, features: DiskFeatures, labels: np.ndarray, rows: np.ndarray,
                  batch_rows: int) -> None:
    """One pass for the standardisation (scikit-learn's float64 running mean and variance), then
    ``head.epochs`` passes of ``partial_fit`` over batches of blocks in a new random order each."""
    scaler = StandardScaler()
    for _, X in _batches(features, rows, batch_rows):
        scaler.partial_fit(X)
    classes = np.unique(labels[rows])
    rng = np.random.default_rng(head.random_state)
    for _ in range(head.epochs):
        for idx, X in _batches(features, rows, batch_rows, rng):
            head.partial_fit(X, labels[idx], classes=classes, scaler=scaler)


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
             val_split: float = 0.2, seed: int = 0, out: str | os.PathLike | None = None,
             max_memory: int = MAX_MEMORY) -> FitResult:
    """Fit head ``model`` on the cache's train split and write a bundle (default: beside the cache).

    Validation uses the cache's ``val`` split, else a seeded stratified ``val_split`` of train;
    the ``test`` split, when present, is only evaluated. Features larger than ``max_memory``
    bytes are streamed from disk: the linear and mlp heads learn from them a shuffled batch of
    about an eighth of ``max_memory`` (at least ``MIN_BATCH_BLOCKS`` blocks) at a time, for
    ``STREAM_EPOCHS`` epochs unless ``params`` say; the other heads need them all in memory and
    refuse. Evaluation goes by the same batches.
    """
    start = time.perf_counter()
    fc = open_cache(cache, in_memory=False)
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
    features = fc.features
    # A batch is copied a few times on its way to the head: an eighth of the budget leaves room.
    batch_rows = max(MIN_BATCH_BLOCKS * features.block_rows,
                     max_memory // 8 // (features.shape[1] * features.dtype.itemsize))
    if features.nbytes <= max_memory:
        features = features.read()
        head.fit(features[train], fc.labels[train])
    elif isinstance(head, TorchHead):
        if "epochs" not in (params or {}):
            head.set_params(epochs=STREAM_EPOCHS)
        log.info("%s: features of %s, more than the %s memory budget: streaming them in batches "
                 "of %d rows", fc.path, size_text(features.nbytes), size_text(max_memory), batch_rows)
        _fit_streamed(head, features, fc.labels, train, batch_rows)
    else:
        raise ConfigError(
            f"{fc.path}: its features take {size_text(features.nbytes)} ({len(features):,} x "
            f"{features.shape[1]:,} {features.dtype}), more than the {size_text(max_memory)} memory "
            f"budget, and the {model} head needs them all in memory: use --model linear or mlp, "
            f"which stream them from disk, or raise --max-memory")
    bundle = Bundle(identity=fc.identity, classes=fc.classes, head=head, model=model,
                    info=dict(cache=str(Path(fc.path).resolve()), params=params or {},
                              val_split=val_split if "val" not in fc.splits else None, seed=seed,
                              split_sha256=split_digest(fc.paths, parts)))
    bundle.metrics, confusion = _evaluate(bundle, features, fc.labels, parts, batch_rows)
    path = Path(out) if out else Path(fc.path).with_suffix(f".{model}")
    bundle.save(path)
    shown = "val" if "val" in parts else "train"
    plot = confusion_matrix_png(confusion[shown], fc.classes, path / f"confusion_{shown}.png",
                                f"{model} on {fc.attrs['backbone']}: {shown} "
                                f"accuracy {bundle.metrics[shown]['accuracy']:.3f}")
    return FitResult(path, bundle.metrics, time.perf_counter() - start, plot)
