"""The probe search: each head's settings tried on the train split and measured on validation,
as the linear-probe protocol of CLIP and DINOv2 does (a wide log sweep of the regularisation,
then a finer one around the best), so that a cache gives the best head it can rather than a
fixed ``C``. Seeded: the same cache and seed give the same table and the same choice.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from ..evaluation import Predictions, Tally
from ..heads.registry import TORCH_HEADS, class_proba, make_head
from . import joint

log = logging.getLogger(__name__)

# Settings per head: the values of each parameter tried together (every combination), and the
# one parameter, if any, refined on a log scale around the best value found. Each grid holds the
# head's default setting, so the search is never worse than it on validation.
GRIDS: dict[str, tuple[dict[str, list], str | None]] = {
    "logistic": ({"C": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]}, "C"),
    "svm": ({"C": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]}, "C"),
    "knn": ({"n_neighbors": [1, 3, 5, 10, 20, 50]}, None),
    "linear": ({"weight_decay": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}, None),
    "mlp": ({"hidden": [256, 1024], "dropout": [0.2, 0.5], "weight_decay": [1e-4, 1e-2]}, None),
}
# How many times a logistic fit each head's search costs, where it is far more: the default search
# is for caches where it takes seconds (``fit.AUTO_SEARCH_VALUES``).
COST = {"mlp": 10, "svm": 10}  # mlp: 100 epochs a setting; svm: 3 folds, slow at high C
# The finer rounds around the best value of the refined parameter: factors of 10^±0.5, then ±0.25.
REFINE = (10 ** 0.5, 10 ** 0.25)


@dataclass
class Trial:
    params: dict
    metrics: dict         # the validation split's, from ``Tally``
    seconds: float
    history: list | None  # a torch head's per-epoch curves

    @property
    def rank(self) -> tuple[float, float]:
        """Higher is better: validation accuracy, then the lower log loss."""
        return self.metrics["accuracy"], -self.metrics["loss"]

    def to_dict(self) -> dict:
        return dict(params=self.params, val_accuracy=self.metrics["accuracy"],
                    val_loss=self.metrics["loss"], seconds=round(self.seconds, 3))


@dataclass
class SearchResult:
    trials: list[Trial]
    best: Trial
    predictions: Predictions  # the best setting's, on validation
    solution: joint.Solution | None = None  # the logistic settings solved, to start the last fit from
    basis: joint.Basis | None = None        # and the training features' axes
    # The chosen setting's head as the search trained it, kept as it is: a streamed search's,
    # on train alone (fitting it again on train+val would be another full run).
    fitted: BaseEstimator | None = None
def grid(model: str, fixed: dict) -> tuple[list[dict], str | None]:
    """The settings to try for head ``model`` besides the ``fixed`` parameters the user gave,
    and the parameter to refine; no settings when the user fixed them all."""
    values, refine = GRIDS[model]
    free = {k: v for k, v in values.items() if k not in fixed}
    settings = [dict(zip(free, combo, strict=True)) for combo in itertools.product(*free.values())]
    return (settings if free else []), (refine if refine in free else None)


def probe(model: str, fixed: dict, features: np.ndarray, labels: np.ndarray, train: np.ndarray,
          val: np.ndarray, classes: list[str], paths: list[str]) -> SearchResult | None:
    """Fit head ``model`` on the rows ``train`` for each setting of its grid, measure each on
    ``val``, refine the best; None when there is nothing to search. The logistic head's settings
    are trained together (``joint``), a round at a time; the other heads' one by one."""
    settings, refine = grid(model, fixed)
    # A neighbour count above the training images cannot be fitted: those settings are not tried.
    settings = [s for s in settings if s.get("n_neighbors", 0) <= len(train)]
    if not settings:
        return None
    X, y, Xv, yv = features[train], labels[train], features[val], labels[val]
    rounds = _Jointly(X, y, Xv, len(classes)) if model == "logistic" and joint.solvable(fixed) else None
    tried: dict[tuple, tuple[Trial, np.ndarray]] = {}

    def attempt(candidates: list[dict]) -> list[Trial]:
        new = [c for c in candidates if tuple(sorted(c.items())) not in tried]
        if rounds is not None and new:
            found = rounds.fit(new)
        else:
            found = [(c, *_one(model, fixed, c, X, y, Xv, yv, len(classes))) for c in new]
        for setting, proba, seconds, history in found:
            trial = Trial(setting, Tally(classes).add(yv, proba).result(), seconds, history)
            tried[tuple(sorted(setting.items()))] = trial, proba
            log.info("search %s: %s -> val accuracy %.4f, loss %.4f", model,
                     ", ".join(f"{k}={v:g}" for k, v in setting.items()), trial.metrics["accuracy"],
                     trial.metrics["loss"])
        return [tried[tuple(sorted(c.items()))][0] for c in candidates]

    best = max(attempt(settings), key=lambda t: t.rank)
    if refine is not None:
        for factor in REFINE:
            centre = best.params[refine]
            around = [{**best.params, refine: centre * f} for f in (1 / factor, factor)]
            best = max([best, *attempt(around)], key=lambda t: t.rank)
    if rounds is not None:
        log.info("search logistic: %s settings of C trained together in %.2f s", rounds.said(),
                 rounds.seconds)
    trials = sorted((t for t, _ in tried.values()), key=lambda t: tuple(t.params.values()))
    proba = next(p for t, p in tried.values() if t is best)
    return SearchResult(trials, best, Predictions.of([paths[i] for i in val], yv, proba),
                        *((rounds.solution, rounds.basis) if rounds is not None else ()))


def _one(model: str, fixed: dict, setting: dict, X: np.ndarray, y: np.ndarray, Xv: np.ndarray,
         yv: np.ndarray, n_classes: int) -> tuple[np.ndarray, float, list | None]:
    """One setting fitted on its own: its validation probabilities, seconds and curves."""
    t0 = time.perf_counter()
    head = make_head(model, **fixed, **setting)
    if model in TORCH_HEADS:
        head.fit(X, y, eval_set=(Xv, yv))
    else:
        head.fit(X, y)
    return class_proba(head, Xv, n_classes), time.perf_counter() - t0, getattr(head, "history_", None)


class _Jointly:
    """The logistic head's rounds of the search, each round's settings of ``C`` trained together
    on the training features standardised once, each from zero, so that a setting's figures are
    those it has fitted alone (started from its neighbour's solution, a refinement took 1 to 4
    steps where it took 8 to 15 from zero on 120 classes, but a weakly regularised one was often
    taken as it started, its neighbour's gradient already within ``tol`` of its own: its figures
    its neighbour's, the choice between them left to rounding); ``solution`` keeps every setting
    solved, for the fit on train+val to start from."""

    def __init__(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, n_classes: int):
        self.Xs, self.scaler = joint.standardised(X)
        self.Xv, self.y, self.n_classes = self.scaler.transform(Xv), y, n_classes
        logits = n_classes if n_classes > 2 else 1
        self.basis = joint.Basis(self.Xs, columns=len(GRIDS["logistic"][0]["C"]) * logits)
        self.solution: joint.Solution | None = None
        self.sizes: list[int] = []
        self.seconds = 0.0

    def fit(self, settings: list[dict]) -> list[tuple[dict, np.ndarray, float, None]]:
        t0 = time.perf_counter()
        Cs = [s["C"] for s in settings]
        solved = joint.fit_path(self.Xs, self.y, self.n_classes, Cs, basis=self.basis)
        self.solution = solved if self.solution is None else self.solution.joined(solved)
        seconds = time.perf_counter() - t0
        self.sizes.append(len(Cs))
        self.seconds += seconds
        return [(s, solved.proba(k, self.Xv), seconds / len(Cs), None) for k, s in enumerate(settings)]

    def said(self) -> str:
        """``6, then 2 and 2``: how many settings each round trained together."""
        first, *rest = self.sizes
        return f"{first}" + (f", then {' and '.join(map(str, rest))}" if rest else "")
