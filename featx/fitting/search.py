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

from ..evaluation import Predictions, Tally
from ..heads.registry import class_proba, make_head
from ..heads.torch_head import TorchHead

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

    def table(self) -> str:
        names = list(self.trials[0].params)
        lines = [" ".join(f"{n:>12s}" for n in names) + f" {'val acc':>8s} {'val loss':>8s} {'s':>6s}"]
        for t in self.trials:
            mark = "  <- chosen" if t is self.best else ""
            lines.append(" ".join(f"{t.params[n]:>12g}" for n in names) +
                         f" {t.metrics['accuracy']:8.4f} {t.metrics['loss']:8.4f} {t.seconds:6.1f}{mark}")
        return "\n".join(lines)


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
    ``val``, refine the best; None when there is nothing to search."""
    settings, refine = grid(model, fixed)
    # A neighbour count above the training images cannot be fitted: those settings are not tried.
    settings = [s for s in settings if s.get("n_neighbors", 0) <= len(train)]
    if not settings:
        return None
    X, y, Xv, yv = features[train], labels[train], features[val], labels[val]
    tried: dict[tuple, tuple[Trial, np.ndarray]] = {}

    def attempt(setting: dict) -> Trial:
        key = tuple(sorted(setting.items()))
        if key not in tried:
            t0 = time.perf_counter()
            head = make_head(model, **fixed, **setting)
            if isinstance(head, TorchHead):
                head.fit(X, y, eval_set=(Xv, yv))
            else:
                head.fit(X, y)
            proba = class_proba(head, Xv, len(classes))
            trial = Trial(setting, Tally(classes).add(yv, proba).result(), time.perf_counter() - t0,
                          getattr(head, "history_", None))
            tried[key] = trial, proba
            log.info("search %s: %s -> val accuracy %.4f, loss %.4f (%.1f s)", model,
                     ", ".join(f"{k}={v:g}" for k, v in setting.items()), trial.metrics["accuracy"],
                     trial.metrics["loss"], trial.seconds)
        return tried[key][0]

    best = max((attempt(s) for s in settings), key=lambda t: t.rank)
    if refine is not None:
        for factor in REFINE:
            centre = best.params[refine]
            best = max([best] + [attempt({**best.params, refine: centre * f})
                                 for f in (1 / factor, factor)], key=lambda t: t.rank)
    trials = sorted((t for t, _ in tried.values()), key=lambda t: tuple(t.params.values()))
    proba = next(p for t, p in tried.values() if t is best)
    return SearchResult(trials, best, Predictions.of([paths[i] for i in val], yv, proba))
