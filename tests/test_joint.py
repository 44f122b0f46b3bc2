"""The logistic head's settings trained together: each one's solution is scikit-learn's, run to
run the same, and the heads it makes are scikit-learn's own pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import featx
from featx.fitting import joint

CS = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def _problem(n_classes: int, n: int = 150, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    y = np.arange(n) % n_classes
    X = centres[y] + rng.normal(0, 1.5, (n, dim)) + rng.normal(0, 3, dim)  # off-centre, as features are
    return X, y


@pytest.mark.parametrize("n_classes, n, dim", [(2, 150, 12), (4, 150, 12), (5, 30, 60)],
                         ids=["binary", "softmax", "fewer images than features"])
def test_every_setting_reaches_scikit_learns_solution(n_classes, n, dim):
    X, y = _problem(n_classes, n, dim)
    Xs, _ = joint.standardised(X)
    solved = joint.fit_path(Xs, y, n_classes, CS, tol=1e-9)
    for k, C in enumerate(CS):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Xs, y)
        assert solved.coef[k].shape == ref.coef_.shape
        np.testing.assert_allclose(solved.coef[k], ref.coef_, atol=2e-4 * max(1, np.abs(ref.coef_).max()))
        np.testing.assert_allclose(solved.intercept[k], ref.intercept_, atol=2e-4 * max(1, C))
        np.testing.assert_allclose(solved.proba(k, Xs), ref.predict_proba(Xs), atol=1e-5)


def test_settings_solved_together_are_the_settings_solved_alone_and_the_same_every_run():
    X, y = _problem(3)
    Xs, _ = joint.standardised(X)
    together = joint.fit_path(Xs, y, 3, CS)
    again = joint.fit_path(Xs, y, 3, CS)
    np.testing.assert_array_equal(together.coef, again.coef)
    for k, C in enumerate(CS):
        alone = joint.fit_path(Xs, y, 3, [C])
        np.testing.assert_allclose(together.proba(k, Xs), alone.proba(0, Xs), atol=1e-4)


def test_a_warm_start_lands_where_a_cold_one_does_in_fewer_steps():
    X, y = _problem(4)
    Xs, _ = joint.standardised(X)
    cold = joint.fit_path(Xs, y, 4, [3.0], tol=1e-8)
    warm = joint.fit_path(Xs, y, 4, [3.0], tol=1e-8, warm=joint.fit_path(Xs, y, 4, [1.0]))
    np.testing.assert_allclose(warm.proba(0, Xs), cold.proba(0, Xs), atol=1e-6)
    assert warm.n_iter[0] < cold.n_iter[0]


def test_the_fitted_head_is_scikit_learns_pipeline_and_its_checks_pass(tmp_path):
    X, y = _problem(3)
    head = joint.fit_head(featx.make_head("logistic", C=0.5, tol=1e-10), X, y)
    ref = featx.make_head("logistic", C=0.5, tol=1e-10).fit(X, y)
    assert type(head[-1]) is LogisticRegression and head[-1].n_iter_[0] > 0
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(head.classes_, [0, 1, 2])


def test_the_search_trains_each_round_together_and_searches_large_caches_too(tmp_path, caplog):
    rng = np.random.default_rng(0)
    n, dim = 12_000, 900  # 10.8M training values: above the size where other heads stop searching
    y = np.arange(n) % 3
    X = (rng.normal(0, 1, (3, dim))[y] * 0.05 + rng.normal(0, 1, (n, dim))).astype(np.float32)
    cache = featx.write_cache(tmp_path / "big.h5", X, y, ["a", "b", "c"])
    with caplog.at_level("INFO", logger="featx"):
        r = featx.fit_head(cache, out=tmp_path / "b")
    assert r.search is not None and len(r.search.trials) == 10
    assert any("6, then 2 and 2 settings of C trained together in" in m for m in caplog.messages)
    assert featx.load_bundle(r.bundle).info["fitted_on"] == "train+val"
