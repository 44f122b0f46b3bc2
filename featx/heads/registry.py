"""The heads by name, each a function making a fresh, unfitted scikit-learn estimator.

``logistic``, ``svm`` and ``knn`` are scikit-learn pipelines; ``linear`` and ``mlp`` are
``TorchHead``. Each maker imports what it builds, so that the names can be listed (by the command
line's help, say) without paying seconds for scikit-learn and torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


def _logistic(**params) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # C=0.1 rather than scikit-learn's 1.0: with ~1,000 standardised features and a few thousand
    # images, C=1 overfits. Validation accuracy / loss with Lite0 features, C=1 → C=0.1:
    # flowers128 0.697/1.93 → 0.712/1.11; hymenoptera 0.948/0.144 → 0.948/0.124.
    return make_pipeline(StandardScaler(), LogisticRegression(**{"C": 0.1, "max_iter": 2000, **params}))


def _torch_head(hidden: int) -> Callable[..., BaseEstimator]:
    def make(**params) -> BaseEstimator:
        from .torch_head import TorchHead

        return TorchHead(**{"hidden": hidden, **params})
    return make


def _svm(**params) -> BaseEstimator:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # LinearSVC gives no probabilities; Platt scaling on 3 folds does.
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(**params), cv=3))


def _knn(**params) -> BaseEstimator:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), KNeighborsClassifier(**params))


HEADS: dict[str, Callable[..., BaseEstimator]] = {
    "logistic": _logistic, "linear": _torch_head(hidden=0), "mlp": _torch_head(hidden=256),
    "svm": _svm, "knn": _knn,
}
DEFAULT_HEAD = "logistic"
# The heads that are ``TorchHead``s: named here, so that the others never import torch.
TORCH_HEADS = ("linear", "mlp")
# Training images each class needs, where a head needs more than one: the svm calibrates its
# probabilities on 3 folds of each class.
MIN_CLASS_IMAGES = {"svm": 3}


def class_proba(head: BaseEstimator, features: np.ndarray, n_classes: int) -> np.ndarray:
    """The fitted ``head``'s probabilities with one column per class number ``0..n_classes-1``
    (zero for a class it never saw), each row summing to one in float64."""
    proba = np.zeros((len(features), n_classes), np.float64)
    proba[:, head.classes_] = head.predict_proba(features)
    # float32 heads' rows sum to one only to float32 precision; metrics check at float64's.
    return proba / proba.sum(1, keepdims=True)


def make_head(name: str, **params) -> BaseEstimator:
    """A fresh, unfitted head; ``params`` go to its classifier (e.g. ``C`` for logistic)."""
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    try:
        return HEADS[name](**params)
    except TypeError as e:
        raise ConfigError(f"bad parameter for the {name} head: {e}") from e
