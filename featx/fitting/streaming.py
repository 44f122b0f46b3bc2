"""Features larger than the memory budget: read from disk in batches of whole blocks, fitted by
``partial_fit`` and evaluated batch by batch, so memory holds a batch rather than all N rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from sklearn.preprocessing import StandardScaler

from ..bundle import Bundle
from ..cache.reader import DiskFeatures
from ..evaluation import HELD_OUT, Predictions, Tally

if TYPE_CHECKING:
    from ..heads.torch_head import TorchHead

# Fewer blocks in a streamed batch would leave its minibatches a few classes, whatever the budget.
MIN_BATCH_BLOCKS = 16


def batch_rows(features: DiskFeatures, max_memory: int) -> int:
    """Rows in a batch: a batch is copied a few times on its way to the head, so an eighth of the
    budget leaves room; at least ``MIN_BATCH_BLOCKS`` blocks."""
    return max(MIN_BATCH_BLOCKS * features.block_rows,
               max_memory // 8 // (features.shape[1] * features.dtype.itemsize))


def batches(features: np.ndarray | DiskFeatures, rows: np.ndarray, size: int,
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


def standardisation(features: DiskFeatures, rows: np.ndarray, size: int) -> StandardScaler:
    """One pass over the rows ``rows`` for a head's scaler: scikit-learn's float64 running mean
    and variance."""
    scaler = StandardScaler()
    for _, X in batches(features, rows, size):
        scaler.partial_fit(X)
    return scaler


def fit_streamed(head: TorchHead, features: DiskFeatures, labels: np.ndarray, rows: np.ndarray,
                 size: int) -> None:
    """One pass for the standardisation (scikit-learn's float64 running mean and variance), then
    ``head.epochs`` passes of ``partial_fit`` over batches of blocks in a new random order each;
    ``head.history_`` gets each pass's mean training loss, the training curve."""
    scaler = standardisation(features, rows, size)
    classes = np.unique(labels[rows])
    rng = np.random.default_rng(head.random_state)
    history = []
    for epoch in range(1, head.epochs + 1):
        total = 0.0
        for idx, X in batches(features, rows, size, rng):
            head.partial_fit(X, labels[idx], classes=classes, scaler=scaler)
            total += head.loss_ * len(idx)
        history.append(dict(epoch=epoch, train_loss=total / len(rows)))
    head.history_ = history


def evaluate(bundle: Bundle, features: np.ndarray | DiskFeatures, labels: np.ndarray,
             parts: dict[str, np.ndarray], size: int, paths: list[str]
             ) -> tuple[dict[str, dict], dict[str, Predictions]]:
    """Metrics per split, summed over batches, and the predictions of the held-out splits
    (val, test)."""
    split_of = np.full(len(labels), -1)
    for k, idx in enumerate(parts.values()):
        split_of[idx] = k
    names = list(parts)
    tallies = [Tally(bundle.classes) for _ in names]
    held: dict[str, list[Predictions]] = {name: [] for name in names if name in HELD_OUT}
    for idx, X in batches(features, np.flatnonzero(split_of >= 0), size):
        proba, y, k = bundle.predict_proba(X), labels[idx], split_of[idx]
        for s in np.unique(k):
            sel = k == s
            tallies[s].add(y[sel], proba[sel])
            if names[s] in held:
                held[names[s]].append(Predictions.of([paths[i] for i in idx[sel]], y[sel], proba[sel]))
    return ({name: t.result() for name, t in zip(names, tallies, strict=True)},
            {name: Predictions.joined(p) for name, p in held.items()})
