"""Out-of-fold class probabilities, and the images whose given label they doubt.

Each image's probabilities come from logistic heads fitted on the other folds (stratified,
seeded), so that no image votes for its own label. Each fold trains the settings of ``GRID``
together (stage two's joint trainer, warm-started from the previous fold), and the setting whose
out-of-fold predictions have the lowest log loss is kept: the regularisation that suits 400
images of two classes does not suit 4,000 of five.

Suspects are the images whose out-of-fold prediction is another class than the one given, most
suspicious first: by the probability of the given label, lowest first. Confident learning
(per-class thresholds at the mean self-confidence, the off-diagonal of the confident joint,
ranked by margin) was measured against it and ranked flips worse (docs/commands/audit.md).
"""

from __future__ import annotations

import numpy as np

from ..fitting import joint

# The logistic heads' C, one decade apart; the fitting of each fold trains them together.
GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def out_of_fold(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int
                ) -> tuple[np.ndarray, float]:
    """Each row's class probabilities (rows x ``n_classes``) from heads fitted on the folds it
    is not in, and the C of those heads. Every class must have ``folds`` rows or more, so that
    every fold's heads learn every class."""
    from sklearn.model_selection import StratifiedKFold

    # Standardised with the statistics of all rows, labels unseen: nothing of a held-out fold's
    # labels reaches its heads. One principal basis serves every fold where it spans the features.
    X, _ = joint.standardised(np.asarray(features, np.float64))
    whole = joint.Basis(X) if len(X) >= X.shape[1] else None
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, labels))
    solutions, loss, warm = [], np.zeros(len(GRID)), None
    for train, held in split:
        warm = joint.fit_path(X[train], labels[train], n_classes, GRID, warm=warm,
                              basis=joint.Basis(X[train], known=whole))
        solutions.append(warm)
        for k in range(len(GRID)):
            p = warm.proba(k, X[held])[np.arange(len(held)), labels[held]]
            loss[k] -= np.log(np.maximum(p, 1e-15)).sum()
    best = int(np.argmin(loss))
    proba = np.zeros((len(labels), n_classes))
    for (_, held), solution in zip(split, solutions, strict=True):
        proba[held] = solution.proba(best, X[held])
    return proba, GRID[best]


def suspects(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rows whose most probable class is not their label, the lowest probability of their
    label first."""
    given = proba[np.arange(len(labels)), labels]
    rows = np.flatnonzero(proba.argmax(1) != labels)
    return rows[np.argsort(given[rows], kind="stable")]
