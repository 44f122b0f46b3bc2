"""The logistic head's search on features larger than memory: every setting trained together on
minibatches streamed from the cache, each pass over the features read once for all of them.

Each setting of ``C`` is the same objective the in-memory search solves (the mean cross-entropy
plus ``||W||^2 / (2 C n)`` on standardised features, a softmax, or a sigmoid for two classes),
minimised by Adam on minibatches; the settings' weights are stacked, so a minibatch's one
product with all of them gives every setting's logits and one more every setting's gradient,
and Adam, elementwise, keeps the settings apart. After each pass every setting is measured on
validation and its best pass kept; training stops once no setting has improved for
``PATIENCE`` passes. The half-decades tried at once (11 of them) cover what the in-memory
search's decades and two refinements would try. The head kept is the chosen setting as it was
trained, on train alone: fitting it again on train+val would be another full run over the
features, so its ``val`` figures are held out without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler

from ..cache.reader import DiskFeatures
from ..evaluation import Predictions, Tally
from ..heads.registry import make_head
from .joint import with_solution
from .search import SearchResult, Trial
from .streaming import batches, standardisation

log = logging.getLogger(__name__)

STREAMED_CS = tuple(float(c) for c in np.logspace(-5, 0, 11))
MINIBATCH = 512
LR = 1e-3
BETAS = (0.9, 0.999)
PATIENCE = 2


class _Stacked:
    """The settings' weights side by side (settings x logits rows of features), and Adam's state."""

    def __init__(self, Cs: np.ndarray, n: int, m: int, d: int):
        self.K, self.m = len(Cs), m
        self.W = np.zeros((self.K * m, d), np.float32)
        self.b = np.zeros(self.K * m, np.float32)
        self.penalty = np.repeat(1 / (Cs * n), m).astype(np.float32)[:, None]
        self.moments = [np.zeros_like(a) for a in (self.W, self.W, self.b, self.b)]
        self.steps = 0

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Each setting's class probabilities: rows x settings x classes, in float64, as the
        metrics check that they sum to one."""
        Z = (X @ self.W.T + self.b).reshape(len(X), self.K, self.m).astype(np.float64)
        if self.m == 1:
            p = expit(Z)
            return np.concatenate([1 - p, p], axis=2)
        return softmax(Z, axis=2)

    def step(self, X: np.ndarray, targets: np.ndarray) -> None:
        """One Adam step of every setting on the minibatch ``X`` (standardised) with ``targets``
        (rows x logits, one-hot, or the label for a sigmoid)."""
        Z = (X @ self.W.T + self.b).reshape(len(X), self.K, self.m)
        residual = (expit(Z) if self.m == 1 else softmax(Z, axis=2)) - targets[:, None, :]
        residual = residual.reshape(len(X), -1) / len(X)
        grads = (residual.T @ X + self.penalty * self.W, residual.sum(0))
        self.steps += 1
        (b1, b2), t = BETAS, self.steps
        for value, grad, first, second in ((self.W, grads[0], *self.moments[:2]),
                                           (self.b, grads[1], *self.moments[2:])):
            first *= b1
            first += (1 - b1) * grad
            second *= b2
            second += (1 - b2) * grad * grad
            value -= LR * (first / (1 - b1 ** t)) / (np.sqrt(second / (1 - b2 ** t)) + 1e-8)


def _targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    return y[:, None].astype(np.float32) if n_classes == 2 else np.eye(n_classes, dtype=np.float32)[y]


def _passes(stacked: _Stacked, features: DiskFeatures, labels: np.ndarray, train: np.ndarray,
            scaler: StandardScaler, size: int, epochs: int, seed: int) -> Iterator[None]:
    """Train ``stacked`` a pass at a time over the rows ``train``, in a new random order each."""
    mean, scale = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
    n_classes = 2 if stacked.m == 1 else stacked.m
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx, X in batches(features, train, size, rng):
            X = (X - mean) / scale
            targets = _targets(labels[idx], n_classes)
            for rows in np.array_split(rng.permutation(len(idx)), max(1, len(idx) // MINIBATCH)):
                stacked.step(X[rows], targets[rows])
        yield


def search_streamed(features: DiskFeatures, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                    classes: list[str], paths: list[str], size: int, epochs: int, seed: int,
                    params: dict) -> SearchResult:
    """Every ``STREAMED_CS`` setting trained together on the rows ``train`` for at most ``epochs``
    passes: the search, with the chosen setting's head (``heads.registry``'s logistic pipeline,
    with ``params``) as ``fitted``."""
    t0 = time.perf_counter()
    scaler = standardisation(features, train, size)
    Cs = np.array(STREAMED_CS)
    stacked = _Stacked(Cs, len(train), 1 if len(classes) == 2 else len(classes), features.shape[1])
    kept: list[tuple[float, np.ndarray, np.ndarray, np.ndarray] | None] = [None] * len(Cs)
    since_better = 0
    for _ in _passes(stacked, features, labels, train, scaler, size, epochs, seed):
        proba = _validation(stacked, features, val, size, scaler)
        better = False
        for k in range(len(Cs)):
            loss = -np.log(np.clip(proba[np.arange(len(val)), k, labels[val]], 1e-15, None)).mean()
            if kept[k] is None or loss < kept[k][0]:
                rows = slice(k * stacked.m, (k + 1) * stacked.m)
                kept[k] = (loss, stacked.W[rows].copy(), stacked.b[rows].copy(), proba[:, k])
                better = True
        since_better = 0 if better else since_better + 1
        if since_better >= PATIENCE:
            break
    seconds = time.perf_counter() - t0
    log.info("search logistic: %d settings of C trained together on streamed features in %.1f s",
             len(Cs), seconds)
    yv = labels[val]
    trials = [Trial({"C": float(C)}, Tally(classes).add(yv, kept[k][3]).result(), seconds / len(Cs), None)
              for k, C in enumerate(Cs)]
    best = max(trials, key=lambda t: t.rank)
    k = trials.index(best)
    head = with_solution(make_head("logistic", **{**params, "C": best.params["C"]}), scaler, kept[k][1],
                         kept[k][2], np.arange(len(classes)), stacked.steps)
    return SearchResult(trials, best, Predictions.of([paths[i] for i in val], yv, kept[k][3]), fitted=head)


def fit_streamed_logistic(head: BaseEstimator, features: DiskFeatures, labels: np.ndarray,
                          train: np.ndarray, n_classes: int, size: int, epochs: int, seed: int) -> None:
    """The logistic head (``heads.registry``) ``head`` fitted at its ``C`` on the rows ``train``
    streamed from disk, ``epochs`` passes, as the streamed search trains each of its settings."""
    scaler = standardisation(features, train, size)
    stacked = _Stacked(np.array([head[-1].C]), len(train), 1 if n_classes == 2 else n_classes,
                       features.shape[1])
    for _ in _passes(stacked, features, labels, train, scaler, size, epochs, seed):
        pass
    with_solution(head, scaler, stacked.W, stacked.b, np.arange(n_classes), stacked.steps)


def _validation(stacked: _Stacked, features: DiskFeatures, val: np.ndarray, size: int,
                scaler: StandardScaler) -> np.ndarray:
    """Every setting's probabilities of the rows ``val``, in their order."""
    mean, scale = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
    order = np.argsort(val)
    out = np.empty((len(val), stacked.K, max(2, stacked.m)), np.float64)
    at = dict(zip(val[order], order, strict=True))
    for idx, X in batches(features, np.sort(val), size):
        out[[at[i] for i in idx]] = stacked.proba((X - mean) / scale)
    return out
