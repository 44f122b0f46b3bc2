"""Saving a fitted head into a bundle folder, and building it back: as data, never a pickle.

A head is kept as its classifier's parameters and the arrays it learned (a scaler's mean and
scale, coefficients, intercepts, classes, calibrators, the neighbours' features), in one
safetensors file (``state_file``). To load one, featx makes a fresh head of the bundle's kind
(one of ``registry.HEADS``, named in bundle.json) with those parameters and sets those arrays on
it: the file names no type or function, so there is nothing in it that could be run.

Why not a pickle, joblib or skops: a pickle runs whatever code its author put in it, and skops
rebuilds the types its file names, so its safety rests on a list of trusted types and on its
own loader. Here the loader knows the five heads and what each is made of; and what it sets
are scikit-learn's public fitted attributes, which survive scikit-learn upgrades that a pickle
of its private internals may not (the svm's calibrated folds and the knn's stored neighbours
are the exceptions, and ``tests/test_heads`` rebuilds every head and compares its predictions).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from ..errors import ConfigError
from ..util.state_file import load_state, save_state
from .registry import HEADS, TORCH_HEADS, make_head

HEAD_FILE = "head.safetensors"
# The fitted attributes of each scikit-learn part featx's heads are made of.
_SCALER = ("mean_", "scale_", "var_", "n_samples_seen_", "n_features_in_")
_LINEAR = ("coef_", "intercept_", "classes_", "n_iter_", "n_features_in_")


def _attrs(obj, names) -> dict:
    return {name: getattr(obj, name) for name in names}


def _set(obj, values: dict, names) -> None:
    for name in names:
        setattr(obj, name, values[name])


def _classifier_params(model: str, head: BaseEstimator) -> dict:
    """The parameters ``make_head(model, **params)`` takes to make this head again."""
    if model in TORCH_HEADS:
        return head.get_params()
    clf = head[-1]
    return (clf.estimator if model == "svm" else clf).get_params()


def _fitted(model: str, head: BaseEstimator) -> dict:
    if model in TORCH_HEADS:
        return dict(module=head.module_.state_dict(), classes=head.classes_)
    first, clf = head[0], head[-1]
    if model == "logistic":
        return dict(scaler=_attrs(first, _SCALER), logistic=_attrs(clf, _LINEAR))
    if model == "svm":
        return dict(scaler=_attrs(first, _SCALER), classes=clf.classes_,
                    n_features=clf.n_features_in_, method=clf.method,
                    folds=[dict(svc=_attrs(fold.estimator, _LINEAR), classes=fold.classes,
                                calibrators=[[c.a_, c.b_] for c in fold.calibrators])
                           for fold in clf.calibrated_classifiers_])
    # knn: what it learned is the (normalised) training features themselves
    return dict(features=clf._fit_X, labels=clf.classes_[clf._y])


def _rebuild(model: str, params: dict, fitted: dict) -> BaseEstimator:
    head = make_head(model, **params)
    if model in TORCH_HEADS:  # the only heads whose arrays are torch's
        import torch

        from .torch_head import head_module

        head.check_params()  # before a layer of the file's ``hidden`` width is made
        head.classes_ = fitted["classes"]
        weights = {k: torch.from_numpy(v) for k, v in fitted["module"].items()}
        head.n_features_in_ = int(weights["0.mean"].shape[0])
        head.module_ = head_module(head.n_features_in_, len(head.classes_), head.hidden, head.dropout)
        head.module_.load_state_dict(weights)
        head.module_.eval()
        return head
    first, clf = head[0], head[-1]
    if model == "knn":
        first.fit(fitted["features"][:1])  # a Normalizer learns nothing but the width
        clf.fit(fitted["features"], fitted["labels"])
        return head
    _set(first, fitted["scaler"], _SCALER)
    if model == "logistic":
        _set(clf, fitted["logistic"], _LINEAR)
        return head
    from sklearn.calibration import _CalibratedClassifier, _SigmoidCalibration

    def calibrator(a: float, b: float) -> _SigmoidCalibration:
        c = _SigmoidCalibration()
        c.a_, c.b_ = a, b
        return c

    folds = []
    for fold in fitted["folds"]:
        svc = clf.estimator.__class__(**clf.estimator.get_params())
        _set(svc, fold["svc"], _LINEAR)
        folds.append(_CalibratedClassifier(svc, [calibrator(a, b) for a, b in fold["calibrators"]],
                                           classes=fold["classes"], method=fitted["method"]))
    clf.calibrated_classifiers_, clf.classes_ = folds, fitted["classes"]
    clf.n_features_in_ = fitted["n_features"]
    return head


def save_head(head: BaseEstimator, model: str, folder: Path) -> str:
    """Write the fitted ``model`` head (a name in ``registry.HEADS``) into ``folder``; returns
    the file's name."""
    made = make_head(model)
    if type(made) is not type(head) or (isinstance(head, Pipeline) and
                                        [type(s) for _, s in head.steps] !=
                                        [type(s) for _, s in made.steps]):
        raise ConfigError(f"a bundle holds one of featx's heads ({', '.join(HEADS)}); this "
                          f"{type(head).__name__} is not the {model} head")
    save_state(folder / HEAD_FILE, dict(model=model, params=_classifier_params(model, head),
                                        fitted=_fitted(model, head)))
    return HEAD_FILE


def load_head(path: Path, model: str) -> BaseEstimator:
    """The ``model`` head saved at ``path``. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``, ``RuntimeError`` for arrays that do not fit the head) if it is not one."""
    state = load_state(path, numpy=True)
    if state.get("model") != model:
        raise ValueError(f"it holds a {state.get('model')} head, not the {model} head bundle.json "
                         f"names")
    _check_finite(state["fitted"])
    return _rebuild(model, state["params"], state["fitted"])


def _check_finite(fitted) -> None:
    """Raise ``ValueError`` where a number the head learned is NaN or infinite: such a head
    answers NaN for every image, which would be scored as a confident class 0."""
    stack = [("fitted", fitted)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif (isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all()) \
                or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{where} holds numbers that are not finite (NaN or infinite)")
