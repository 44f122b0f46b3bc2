"""Every setting of the logistic head's search trained together, in one pass over the features.

A logistic head at ``C`` minimises scikit-learn's objective on standardised features: the mean
cross-entropy plus ``||W||^2 / (2 C n)`` (the intercept free), a softmax over the classes, or for
two classes one logit and a sigmoid, as ``LogisticRegression`` fits it. The settings share
everything but their weights, so their weights are stacked side by side: one matrix product of
the features with all of them gives every setting's logits, and one with the residuals every
setting's gradient. Each setting then takes its own L-BFGS step (its own curvature memory, its
own backtracking line search) and stops on its own once its largest gradient entry is below
``tol``, as scikit-learn's lbfgs does, so the result is each setting's own solution, not a
compromise between them.

L-BFGS starts from a first guess of each setting's inverse Hessian taken from the features'
principal axes (``Basis``): along each axis the curvature is about known (the axis's variance,
times the loss's curvature, plus the penalty), which makes a weakly regularised setting on
correlated features as quick to solve as a strongly regularised one (on flowers128, C = 1 took
34 steps where scikit-learn's lbfgs takes 100 or more for C = 0.1). With fewer images than
features the weights are solved in the axes the images span, all they can use (the optimum lies
in them, and the penalty is the same in any orthonormal axes), so the problem shrinks to that many
dimensions; with more, in those axes too where rotating every image once costs less than the
first guesses would in the features' own (a search's many settings), else in the features' own.

In NumPy, float64, as scikit-learn fits: the products run on every core in its BLAS, and the
per-setting vector arithmetic, small, runs in this thread. (Torch's threads, measured here on 2
cores, spent 15 ms on a 38k-element reduction that takes NumPy 0.04 ms, waiting at barriers
whenever another process held a core, and its float64 product was 3x slower than OpenBLAS's.)

The fitted heads are scikit-learn's ``StandardScaler`` + ``LogisticRegression`` pipelines with
the solution set as their fitted attributes: the estimator users get, saved and loaded as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.special import expit, log_expit, softmax
from sklearn.base import BaseEstimator

# The largest gradient entry at which a setting counts as solved: scikit-learn's lbfgs default
# (``LogisticRegression(tol=1e-4)``), the stopping rule of the heads it would fit.
TOL = 1e-4
# Curvature pairs each setting remembers (scipy's L-BFGS-B default, which scikit-learn uses).
MEMORY = 10
# Halvings of the step a line search tries before it gives up on the direction.
LINE_STEPS = 30
ARMIJO = 1e-4
# Rows per weight column below which the weights are solved in the principal axes (``Basis``).
ROTATE_ROWS = 400
# A setting's longest gradient rows turned back to the features' axes first (``Basis.above``).
LONGEST = 4


@dataclass
class Solution:
    """The weights of ``Cs.size`` settings: ``coef`` (settings x logits x features),
    ``intercept`` (settings x logits), and the L-BFGS iterations each took."""

    Cs: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray

    def joined(self, other: Solution) -> Solution:
        """Both solutions' settings in one."""
        return Solution(*(np.concatenate([a, b]) for a, b in (
            (self.Cs, other.Cs), (self.coef, other.coef), (self.intercept, other.intercept),
            (self.n_iter, other.n_iter))))

    def proba(self, k: int, X: np.ndarray) -> np.ndarray:
        """Setting ``k``'s class probabilities of standardised features ``X``."""
        Z = X @ self.coef[k].T + self.intercept[k]
        if Z.shape[1] == 1:
            p = expit(Z[:, 0])
            return np.stack([1 - p, p], axis=1)
        return softmax(Z, axis=1)

    def nearest(self, C: float) -> tuple[np.ndarray, np.ndarray]:
        """The weights of the setting closest to ``C`` on a log scale: a warm start for ``C``."""
        k = int(np.argmin(np.abs(np.log(self.Cs) - np.log(C))))
        return self.coef[k], self.intercept[k]


class _Problem:
    """The objective of every setting at once, on standardised features ``X`` (n x d), labels
    ``y`` (0..m-1) and ``Cs``; parameters are one row per setting: logits x (features + 1)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int, Cs: np.ndarray):
        self.X, (self.n, self.d) = X, X.shape
        self.binary = n_classes == 2
        self.m = 1 if self.binary else n_classes
        self.target = y.astype(np.float64)[:, None] if self.binary else np.eye(n_classes)[y]
        self.rows, self.y = np.arange(self.n), y
        self.penalty = 1 / (Cs * self.n)  # per setting: the L2 strength of the mean loss
        self.curvature = _curvature(n_classes)

    def split(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = w[:, : self.m * self.d].reshape(len(w), self.m, self.d)
        return W, w[:, self.m * self.d:]

    def __call__(self, w: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The objective and its gradient of the settings ``rows``, whose parameters ``w``
        holds, one row each."""
        W, b = self.split(w)
        K, penalty = len(w), self.penalty[rows]
        Z = (self.X @ W.reshape(K * self.m, self.d).T).reshape(self.n, K, self.m) + b
        if self.binary:
            z, t = Z[..., 0], self.target
            loss = -(t * log_expit(z) + (1 - t) * log_expit(-z)).mean(0)
            residual = (expit(z) - t)[..., None]
        else:  # one exponential for the loss and the residual (SciPy's logsumexp and softmax
            # took one each, and 3 ms of checks a call on 120 classes)
            Z -= Z.max(2, keepdims=True)  # the loss is the same, and no exponential overflows
            residual = np.exp(Z)
            total = residual.sum(2, keepdims=True)
            loss = (np.log(total[..., 0]) - Z[self.rows, :, self.y]).mean(0)
            residual /= total
            residual -= self.target[:, None, :]
        value = loss + 0.5 * penalty * np.einsum("kij,kij->k", W, W)
        residual /= self.n
        gW = (residual.reshape(self.n, K * self.m).T @ self.X).reshape(K, self.m, self.d)
        gW += penalty[:, None, None] * W
        return value, np.concatenate([gW.reshape(K, -1), residual.sum(0)], axis=1)


class Basis:
    """The principal axes of standardised features ``X`` (``axes``, features x r, and the variance
    along each, ``variances``), and the space the weights are solved in (``data``: ``X`` itself,
    or in the axes where there are fewer images than features, whose span holds every solution,
    so the problem shrinks to that many dimensions). The axes come from the smaller Gram matrix,
    in float32, as a preconditioner needs no more; rotated weights are solved exactly in them (the
    rotation is float64, made orthonormal); so are they where rotating the rows once costs less
    than the first guesses would in the features' own axes, for ``columns`` weight columns.
    ``known``: a basis of other rows whose axes are complete, taken as they are (no new
    decomposition: a first guess needs no more)."""

    def __init__(self, X: np.ndarray, known: Basis | None = None, columns: int = 1):
        X = np.ascontiguousarray(X, np.float64)
        n, d = X.shape
        # Rotating costs n d^2 once; a first guess in the features' own axes 4 d^2 a weight column
        # (``columns``: settings x logits) each of some 100 steps.
        self.rotates = (n < d or n < ROTATE_ROWS * columns) and not (known is not None and known.complete)
        if known is not None and known.complete:
            self.axes, self.variances = known.axes, known.variances
        elif n < d:
            X32 = X.astype(np.float32)
            values, U = _eigh(X32 @ X32.T / n)
            keep = values > values.max() * 1e-6
            self.axes = (X32.T @ U[:, keep]) / np.sqrt(n * values[keep])
        else:
            X32 = X.astype(np.float32)
            values, axes = _eigh(X32.T @ X32 / n)
            self.axes, self.variances = axes, np.maximum(values, 0).astype(np.float64)
        self.axes = self.axes.astype(np.float64)
        if self.rotates:  # orthonormal to float64's precision, as the rotation must be exact
            self.axes = _orthonormal(self.axes)
        self.data = X @ self.axes if self.rotates else X
        if self.rotates:
            self.variances = (self.data ** 2).mean(0)

    @property
    def complete(self) -> bool:
        """Whether the axes span every feature, so that they serve other rows as well."""
        return self.axes.shape[1] == self.axes.shape[0]

    def inward(self, W: np.ndarray) -> np.ndarray:
        """Weights (rows x features) in the space they are solved in."""
        return W @ self.axes if self.rotates else W

    def outward(self, W: np.ndarray) -> np.ndarray:
        """Solved weights back in the features' own axes."""
        return W @ self.axes.T if self.rotates else W

    def first_guess(self, q: np.ndarray, penalty: np.ndarray, curvature: float) -> np.ndarray:
        """Weights' gradients ``q`` (settings x logits x dimensions, each setting's ``penalty``)
        through that setting's first guess of the inverse Hessian: along each principal axis one
        over the loss's curvature there (``curvature`` times the axis's variance) plus the
        penalty."""
        along = 1 / (curvature * self.variances[None, :] + penalty[:, None])
        if self.rotates:
            return q * along[:, None, :]
        flat = 1 / penalty[:, None, None]
        return q * flat + ((q @ self.axes) * (along[:, None, :] - flat)) @ self.axes.T

    def above(self, g: np.ndarray, tol: float) -> np.ndarray:
        """Whether each setting's largest weight gradient entry (``g``: settings x logits x
        dimensions) exceeds ``tol`` in the features' own axes, where scikit-learn's rule measures
        it (the largest entry of a vector is not the same in every axes). Rotated gradients are
        turned back only where their lengths cannot tell, as the axes are orthonormal: a row's
        largest entry is at most its length, and at least its length over the root of the
        features' count; and the longest first, as one row above settles it (rotating every row
        took a quarter of a 120-class search)."""
        if not self.rotates:
            return np.abs(g).max((1, 2)) > tol
        length = np.sqrt(np.einsum("kij,kij->ki", g, g))
        above = (length > tol * np.sqrt(len(self.axes))).any(1)
        for k in np.flatnonzero(~above & (length > tol).any(1)):
            order = np.argsort(-length[k])[: np.count_nonzero(length[k] > tol)]
            above[k] = any(np.abs(g[k][rows] @ self.axes.T).max() > tol
                           for rows in (order[:LONGEST], order[LONGEST:]) if len(rows))
        return above


def _eigh(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalues and eigenvectors of the symmetric ``G``, by LAPACK's divide and conquer
    through SciPy's, which took half of NumPy's time on the features' 1,280 x 1,280 Gram matrix."""
    from scipy.linalg import eigh

    return eigh(G, driver="evd", overwrite_a=True, check_finite=False)


def _orthonormal(A: np.ndarray) -> np.ndarray:
    """The columns of ``A``, orthonormal to float32's precision, made so to float64's: by
    Cholesky QR (``A = QR`` with ``R`` from ``A``'s Gram matrix), exact for a matrix this well
    conditioned and made of matrix products, where Householder QR took 1.3 to 2 times as long."""
    from scipy.linalg import solve_triangular

    return solve_triangular(np.linalg.cholesky(A.T @ A), A.T, lower=True).T


def _curvature(n_classes: int) -> float:
    """The cross-entropy's curvature in a logit that the first guesses assume (the scale that
    L-BFGS's memory then corrects). A quarter, p (1 - p) at p = 1/2, for two classes. For more, it
    lies between a quarter and the curvature where every setting starts, at p = 1/k: a quarter
    took a 120-class search's strongly regularised settings 14 steps where 1/k took 3, and 1/k its
    weakly regularised ones 16 where a quarter took 7 (their first steps overshoot). Measured on
    100 to 200 classes, ``a quarter x (4 p (1 - p))^e`` took the least time at e = 3/8 (of 0, 1/4,
    3/8, 1/2, 3/4, 1): a fifth less than a quarter at 120 classes, 30 % at 200, with the same
    choices and accuracies; the same time on flowers128's 5 classes."""
    start = (1 / n_classes) * (1 - 1 / n_classes)
    return 0.25 * (4 * start) ** 0.375


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("kp,kp->k", a, b)


class _Memory:
    """L-BFGS's memory of the settings still going: their last ``MEMORY`` steps ``S`` and changes
    of the gradient ``Y`` (one row a setting), and each pair's ``1 / (s . y)``."""

    def __init__(self):
        self.S: list[np.ndarray] = []
        self.Y: list[np.ndarray] = []
        self.rho: list[np.ndarray] = []

    def add(self, s: np.ndarray, y: np.ndarray) -> None:
        self.S.append(s)
        self.Y.append(y)
        self.rho.append(1 / np.maximum(_rowdot(s, y), 1e-300))
        if len(self.S) > MEMORY:
            del self.S[0], self.Y[0], self.rho[0]

    def keep(self, going: np.ndarray) -> None:
        """Only the rows ``going``: the other settings have converged."""
        for pairs in (self.S, self.Y, self.rho):
            pairs[:] = [a[going] for a in pairs]


def _direction(g: np.ndarray, memory: _Memory, first_guess) -> np.ndarray:
    """L-BFGS's two-loop recursion, for every row at once (each its own memory), with
    ``first_guess`` as the inverse Hessian the memory corrects, scaled as L-BFGS scales its
    identity: by the curvature the latest step measured."""
    q, alphas = g.copy(), []
    pairs = list(zip(memory.S, memory.Y, memory.rho, strict=True))
    for s, y, rho in reversed(pairs):
        a = rho * _rowdot(s, q)
        q -= a[:, None] * y
        alphas.append(a)
    q = first_guess(q)
    if pairs:
        s, y, _ = pairs[-1]
        measured = _rowdot(s, y) / np.maximum(_rowdot(y, first_guess(y)), 1e-300)
        q *= np.where(measured > 0, measured, 1.0)[:, None]
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        q += s * (a - rho * _rowdot(y, q))[:, None]
    return -q


def _line_search(problem: _Problem, rows: np.ndarray, w: np.ndarray, f: np.ndarray, g: np.ndarray,
                 d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backtracking from the full step until each row decreases enough (Armijo): the new
    parameters, values and gradients, and the rows that found no decrease at all. Each trial's
    gradient is computed with its value, in one pass: a step is usually taken as it is tried."""
    slope = _rowdot(g, d)
    t = np.ones(len(rows))
    w_new, f_new, g_new = w.copy(), f.copy(), g.copy()
    pending = np.ones(len(rows), bool)
    for _ in range(LINE_STEPS):
        trial = w[pending] + t[pending, None] * d[pending]
        f_trial, g_trial = problem(trial, rows[pending])
        ok = f_trial <= f[pending] + ARMIJO * t[pending] * slope[pending]
        idx = np.flatnonzero(pending)[ok]
        w_new[idx], f_new[idx], g_new[idx] = trial[ok], f_trial[ok], g_trial[ok]
        pending[idx] = False
        if not pending.any():
            break
        t[pending] /= 2
    return w_new, f_new, g_new, pending


def _minimise(problem: _Problem, w: np.ndarray, tol: float, max_iter: int, basis: Basis
              ) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS on each row of ``w`` (in ``basis``'s space, solved in place) until its gradient's
    largest entry in the features' own axes is at most ``tol``; a setting that has converged
    leaves the working rows, so it costs nothing after (and its memory is not copied along each
    step). The first guesses of each setting's inverse Hessian are ``basis``'s; the intercepts'
    is one over the loss's curvature."""

    def unsolved(g: np.ndarray) -> np.ndarray:
        gW, gb = problem.split(g)
        out = np.abs(gb).max(1) > tol
        out[~out] = basis.above(gW[~out], tol)  # the weights only where the intercepts pass
        return out

    def guess(q: np.ndarray, settings: np.ndarray) -> np.ndarray:
        W, b = problem.split(q)
        W = basis.first_guess(W, problem.penalty[settings], problem.curvature)
        return np.concatenate([W.reshape(len(q), -1), b / problem.curvature], axis=1)

    solved, iters = w, np.zeros(len(w), int)
    on = np.arange(len(w))  # the settings still going, one working row each
    f, g = problem(w, on)
    memory = _Memory()
    going = unsolved(g)
    for _ in range(max_iter):
        if not going.all():
            solved[on[~going]] = w[~going]
            on, w, f, g = on[going], w[going], f[going], g[going]
            memory.keep(going)
        if not len(on):
            break
        d = _direction(g, memory, partial(guess, settings=on))
        uphill = _rowdot(g, d) >= 0  # a stale memory: those settings restart from the gradient
        if uphill.any():
            d[uphill] = -guess(g[uphill], on[uphill])
        w_new, f_new, g_new, stalled = _line_search(problem, on, w, f, g, d)
        memory.add(w_new - w, g_new - g)
        iters[on] += 1
        w, f, g = w_new, f_new, g_new
        # No decrease along the direction: as converged as float64 allows.
        going = unsolved(g) & ~stalled
    solved[on] = w
    return solved, iters


def fit_path(X: np.ndarray, y: np.ndarray, n_classes: int, Cs, warm: Solution | None = None,
             tol: float = TOL, max_iter: int = 2000, basis: Basis | None = None) -> Solution:
    """Logistic heads at every ``C`` in ``Cs`` on standardised features ``X`` and labels ``y``
    (0..n_classes-1, every class present), trained together; each starts from the nearest
    setting of ``warm`` where given, else from zero. ``basis``: ``Basis(X)``, where it is known."""
    Cs = np.asarray(Cs, np.float64)
    basis = basis or Basis(X)
    problem = _Problem(basis.data, np.asarray(y, np.int64), n_classes, Cs)
    w = np.zeros((len(Cs), problem.m * (problem.d + 1)))
    if warm is not None:
        for k, C in enumerate(Cs):
            coef, intercept = warm.nearest(C)
            w[k] = np.concatenate([basis.inward(coef).ravel(), intercept])
    w, iters = _minimise(problem, w, tol, max_iter, basis)
    W, b = problem.split(w)
    return Solution(Cs, basis.outward(W.reshape(-1, problem.d)).reshape(len(Cs), problem.m, -1),
                    b.copy(), iters)


# The logistic head's parameters the joint trainer solves for: any other (a penalty, a solver,
# class weights) is left to scikit-learn's own fit.
SOLVED = frozenset({"C", "max_iter", "tol"})


def solvable(params: dict) -> bool:
    """Whether a logistic head with these parameters is what ``fit_path`` solves."""
    return set(params) <= SOLVED


def fit_head(head: BaseEstimator, X: np.ndarray, y: np.ndarray, warm: Solution | None = None,
             known: Basis | None = None) -> BaseEstimator:
    """Fit the logistic head (``heads.registry``) ``head`` on ``X`` and ``y`` by ``fit_path`` at
    its ``C``, from ``warm`` where given (and ``known``'s axes where they serve); returns it
    fitted, as scikit-learn's own fit leaves it."""
    clf = head[-1]
    clf._validate_params()  # a bad C or tol is refused as scikit-learn's own fit refuses it
    classes = np.unique(y)
    Xs, scaler = standardised(X)
    solved = fit_path(Xs, np.searchsorted(classes, y), len(classes), [clf.C], warm=warm,
                      tol=clf.tol, max_iter=clf.max_iter, basis=Basis(Xs, known))
    return with_solution(head, scaler, solved.coef[0], solved.intercept[0], classes, solved.n_iter[0])


def with_solution(head: BaseEstimator, scaler: BaseEstimator, coef: np.ndarray, intercept: np.ndarray,
                  classes: np.ndarray, n_iter: int) -> BaseEstimator:
    """The logistic head ``head`` as scikit-learn's own fit would leave it: its scaler fitted,
    and the weights found (logits x features), in float64, as its fitted attributes."""
    head.steps[0] = (head.steps[0][0], scaler)
    clf = head[-1]
    clf.coef_, clf.intercept_ = np.array(coef, np.float64), np.array(intercept, np.float64)
    clf.classes_, clf.n_features_in_ = np.asarray(classes), coef.shape[1]
    clf.n_iter_ = np.array([int(n_iter)], np.int32)
    return head


def fitted(model: str, params: dict, X: np.ndarray, y: np.ndarray, warm: Solution | None = None,
           known: Basis | None = None) -> BaseEstimator:
    """Head ``model`` (``heads.registry``) with ``params``, fitted on ``X`` and ``y``: by
    ``fit_head`` where it is the logistic head this module solves, else by its own ``fit``."""
    from ..heads.registry import make_head

    head = make_head(model, **params)
    if model == "logistic" and solvable(params):
        return fit_head(head, X, y, warm, known)
    return head.fit(X, y)


def standardised(X: np.ndarray) -> tuple[np.ndarray, BaseEstimator]:
    """``X`` scaled as the head's ``StandardScaler`` does, and that scaler, fitted on ``X``."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    return scaler.transform(X), scaler
