"""The metrics every stage reports, checked against scikit-learn on known inputs, and the split
that holds out validation images (few images of many classes included)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from featx.evaluation import (
    Predictions,
    Tally,
    metrics,
    read_predictions,
    split_indices,
    wilson_interval,
    write_predictions,
)


def _known(n_classes: int, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    proba = rng.dirichlet(np.ones(n_classes), n)
    proba[np.arange(n), y] += rng.uniform(0, 1.5, n)  # better than chance, not perfect
    return y, proba / proba.sum(1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 7])
def test_metrics_match_scikit_learn_in_batches(n_classes):
    y, proba = _known(n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    tally = Tally(classes)
    for i in range(0, len(y), 64):  # as a cache read a block at a time is measured
        tally.add(y[i:i + 64], proba[i:i + 64])
    m, guess = tally.result(), proba.argmax(1)
    assert m == metrics(y, proba, classes)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, guess), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, guess), abs=1e-12)
    assert m["loss"] == pytest.approx(log_loss(y, proba), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, guess, average="macro"), abs=1e-12)
    assert m["confusion"] == confusion_matrix(y, guess).tolist()
    p, r, f, s = precision_recall_fscore_support(y, guess)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == pytest.approx(dict(precision=p[i], recall=r[i], f1=f[i], support=s[i]))
    if n_classes == 2:
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), abs=1e-12)
        assert "top5_accuracy" not in m
    else:
        assert m["top5_accuracy"] == pytest.approx(top_k_accuracy_score(y, proba, k=5), abs=1e-12)
        assert "roc_auc" not in m


def test_wilson_interval():
    # Known values: 95 of 100 right -> [0.8882, 0.9785]; 0 of 10 -> [0, 0.2775].
    assert wilson_interval(95, 100) == pytest.approx((0.88825, 0.97846), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    lo, hi = wilson_interval(145, 153)
    assert lo < 145 / 153 < hi and hi - lo < 0.08


def test_a_class_with_one_image_stays_in_train():
    labels = np.array([0] * 5 + [1] * 5 + [2])  # class 2 has a single image
    parts = split_indices(np.array(["train"] * 11), labels, 0.2, seed=0)
    assert 10 in parts["train"] and 10 not in parts["val"]
    assert sorted(np.unique(labels[parts["val"]])) == [0, 1]
    assert sorted(np.concatenate([parts["train"], parts["val"]]).tolist()) == list(range(11))


def test_few_images_of_many_classes_hold_out_one_of_each():
    labels = np.repeat(np.arange(40), 3)  # 40 classes, 3 images each: 20 % is fewer than 40
    one, two = (split_indices(np.array(["train"] * len(labels)), labels, 0.2, seed=1) for _ in range(2))
    assert np.array_equal(one["val"], two["val"])  # seeded
    assert np.bincount(labels[one["val"]]).tolist() == [1] * 40
    assert np.bincount(labels[one["train"]]).tolist() == [2] * 40


def test_predictions_round_trip(tmp_path):
    y, proba = _known(3, n=10)
    held = {"val": Predictions.of([f"a/{i}.jpg" for i in range(10)], y, proba)}
    back = read_predictions(write_predictions(tmp_path / "p.csv", held, ["x", "y", "z"]), ["x", "y", "z"])
    assert back["val"].paths == held["val"].paths
    assert np.array_equal(back["val"].labels, y) and np.array_equal(back["val"].predicted, proba.argmax(1))
    assert back["val"].confidence == pytest.approx(proba.max(1), abs=1e-6)
