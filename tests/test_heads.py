"""Heads are scikit-learn estimators: fit / predict / predict_proba, and they save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import featx
from featx.heads.registry import HEADS, make_head
from featx.heads.storage import load_head, save_head
from featx.heads.torch_head import minibatch_rows


def _data(n_classes: int):
    X, y = make_classification(n_samples=240, n_features=32, n_informative=12, n_classes=n_classes,
                               n_clusters_per_class=1,
                               class_sep=2.5, random_state=0)
    return X.astype(np.float32) * 5 + 3, y  # not standardised, as real features are not


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("name", list(HEADS))
def test_the_estimator_contract(name, n_classes, tmp_path):
    X, y = _data(n_classes)
    head = make_head(name)
    with pytest.raises(NotFittedError):
        head.predict(X)
    assert head.fit(X[:180], y[:180]) is head
    proba = head.predict_proba(X[180:])
    assert proba.shape == (60, n_classes) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (head.predict(X[180:]) == head.classes_[proba.argmax(1)]).all()
    assert (head.predict(X[180:]) == y[180:]).mean() > 0.8
    assert repr(clone(head)) == repr(head)  # clonable: __init__ only stores its arguments

    # Saved as data and rebuilt: the very same probabilities, and the same parameters.
    again = load_head(tmp_path / save_head(head, name, tmp_path), name)
    np.testing.assert_array_equal(again.predict_proba(X[180:]), proba)
    assert repr(again) == repr(head)


@pytest.fixture
def one_thread():
    """The checks' data are a few hundred rows at most, where torch's threads only synchronise:
    on a busy 2-core machine they made the checks take minutes rather than seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The linear and mlp heads as fit-head makes them, with their defaults: the schedule scales with
# the data (batch_size="auto"), so that the toy sets train for enough steps.
@parametrize_with_checks([make_head("linear"), make_head("mlp")])
def test_torch_heads_pass_scikit_learns_checks_with_their_defaults(estimator, check, one_thread):
    check(estimator)


@pytest.mark.parametrize("batch_size, n, rows", [
    ("auto", 1, 1), ("auto", 9, 1), ("auto", 245, 49), ("auto", 300, 60), ("auto", 1279, 255),
    ("auto", 1280, 256), ("auto", 160_000, 256), (64, 10, 64), (64, 160_000, 64)])
def test_auto_minibatches_are_a_fifth_of_the_rows_at_most_256(batch_size, n, rows):
    assert minibatch_rows(batch_size, n) == rows


def test_auto_minibatches_make_every_epoch_at_least_five_steps():
    for n in range(1, 3000):
        assert len(range(0, n, minibatch_rows("auto", n))) >= min(n, 5)


def test_auto_minibatches_train_large_data_as_256_did():
    X, y = make_classification(n_samples=1300, n_features=16, random_state=0)
    auto, fixed = (make_head("linear", epochs=2, batch_size=b).fit(X, y) for b in ("auto", 256))
    np.testing.assert_array_equal(auto.predict_proba(X), fixed.predict_proba(X))


def test_torch_heads_are_a_plain_module_on_raw_features():
    X, y = _data(3)
    head = make_head("mlp", epochs=5).fit(X, y)
    with torch.inference_mode():
        logits = head.module_(torch.from_numpy(X[:10]))
    np.testing.assert_allclose(logits.softmax(1).numpy(), head.predict_proba(X[:10]), rtol=1e-6)


def test_torch_head_training_is_seeded():
    X, y = _data(2)
    a, b = (make_head("linear", epochs=3).fit(X, y) for _ in range(2))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_a_head_file_is_arrays_and_json_that_any_safetensors_reader_opens(tmp_path):
    X, y = _data(2)
    for name, params in (("linear", {"epochs": 2}), ("logistic", {"C": 0.5})):
        head = make_head(name, **params).fit(X, y)
        file = tmp_path / save_head(head, name, tmp_path)
        with safe_open(file, "np") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            state = json.loads(f.metadata()["featx.state"])
        assert state["model"] == name and all(state["params"][k] == v for k, v in params.items())
        assert all(a.dtype.kind in "fiu" for a in arrays.values())
    np.testing.assert_array_equal(arrays[state["fitted"]["logistic"]["coef_"]["tensor"]], head[-1].coef_)


def test_a_head_file_of_another_kind_is_refused(tmp_path):
    X, y = _data(2)
    file = tmp_path / save_head(make_head("knn").fit(X, y), "knn", tmp_path)
    with pytest.raises(ValueError, match="it holds a knn head, not the logistic head bundle.json names"):
        load_head(file, "logistic")
    with pytest.raises(featx.ConfigError, match="this Pipeline is not the svm head"):
        save_head(make_head("knn").fit(X, y), "svm", tmp_path)


@pytest.mark.parametrize("name, params, message", [
    ("forest", {}, "unknown head 'forest': choose one of logistic, linear, mlp, svm, knn"),
    ("logistic", {"gamma": 1}, "bad parameter for the logistic head: "),
])
def test_bad_heads_are_refused(name, params, message):
    with pytest.raises(featx.ConfigError, match=message):
        make_head(name, **params)


def test_bad_torch_settings_are_refused_at_fit():
    X, y = _data(2)
    with pytest.raises(featx.ConfigError, match="^epochs must be a whole number, 1 or more, not 0$"):
        make_head("linear", epochs=0).fit(X, y)
    with pytest.raises(featx.ConfigError, match="^hidden must be a whole number, 0 or more, not 'abc'$"):
        make_head("mlp", hidden="abc").fit(X, y)
    with pytest.raises(featx.ConfigError, match="^batch_size must be 'auto' or a whole number, 1 or more, "
                                                "not 'big'$"):
        make_head("linear", batch_size="big").fit(X, y)


def test_partial_fit_epochs_over_all_the_data_are_fit():
    X, y = _data(3)
    whole = make_head("linear", epochs=3).fit(X, y)
    parts = make_head("linear")
    for _ in range(3):
        assert parts.partial_fit(X, y, classes=np.unique(y)) is parts
    np.testing.assert_array_equal(parts.predict_proba(X), whole.predict_proba(X))


def test_partial_fit_standardises_by_a_given_scaler():
    from sklearn.preprocessing import StandardScaler

    X, y = _data(2)
    scaler = StandardScaler().partial_fit(X[:100]).partial_fit(X[100:])
    head = make_head("mlp").partial_fit(X[:50], y[:50], classes=[0, 1], scaler=scaler)
    np.testing.assert_allclose(head.module_[0].mean.numpy(), X.mean(0), rtol=1e-5)
    np.testing.assert_allclose(head.module_[0].scale.numpy(), X.std(0), rtol=1e-4)
    with pytest.raises(featx.ConfigError, match=r"labels \[7\] are not among the classes \[0, 1\]"):
        head.partial_fit(X[:2], [0, 7])
    with pytest.raises(featx.ConfigError, match="the first call to partial_fit needs classes="):
        make_head("linear").partial_fit(X, y)


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_a_loaded_torch_head_goes_on_training(name, tmp_path):
    X, y = _data(3)
    labels = np.array([3, 5, 9])[y]
    again = load_head(tmp_path / save_head(make_head(name, epochs=2).fit(X[:120], labels[:120]), name,
                                           tmp_path), name)
    before = [p.detach().clone() for p in again.module_.parameters()]
    assert again.partial_fit(X[120:], labels[120:]) is again
    assert all(not torch.equal(a, b) for a, b in zip(before, again.module_.parameters(), strict=True))
    assert set(again.predict(X)) == {3, 5, 9}
