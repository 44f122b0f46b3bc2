"""``TorchHead``, the ``linear`` and ``mlp`` heads: a small torch network whose first layer
standardises its input, so the fitted module alone maps raw features to logits; and any fitted
logistic or torch head turned into one, which is where fine-tuning starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ..errors import ConfigError


class Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def head_module(n_features: int, n_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Standardise → Linear (``hidden`` = 0), or Standardise → Linear → ReLU → Dropout → Linear."""
    layers: list[nn.Module] = [Standardize(torch.zeros(n_features), torch.ones(n_features))]
    if hidden:
        layers += [nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(hidden or n_features, n_classes))
    return nn.Sequential(*layers)


def _whole(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _number(v) -> bool:
    return _whole(v) or isinstance(v, float | np.floating)


# The widest hidden layer: 64 times the mlp's default, and a layer of it on the widest features
# is a few GB, where 10,000,000,000 asked for terabytes and ended in the allocator's traceback.
MAX_HIDDEN = 1 << 14
# (parameter, what it must be, test) for TorchHead's parameters.
_PARAMS = (("hidden", "a whole number, 0 or more", lambda v: _whole(v) and v >= 0),
           ("hidden", f"at most {MAX_HIDDEN}", lambda v: v <= MAX_HIDDEN),
           ("epochs", "a whole number, 1 or more", lambda v: _whole(v) and v >= 1),
           ("batch_size", "'auto' or a whole number, 1 or more",
            lambda v: (_whole(v) and v >= 1) or (isinstance(v, str) and v == "auto")),
           ("dropout", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
           ("lr", "a number above 0", lambda v: _number(v) and v > 0),
           ("weight_decay", "a number, 0 or more", lambda v: _number(v) and v >= 0))


# batch_size="auto": minibatches of this many rows at most, and of at most a fifth of the rows, so
# that every epoch is at least STEPS_PER_EPOCH optimiser steps (TorchHead's docstring says why).
AUTO_BATCH_SIZE = 256
STEPS_PER_EPOCH = 5


def minibatch_rows(batch_size: int | str, n: int) -> int:
    """Rows in a minibatch of an epoch over ``n`` rows: ``batch_size``, or for ``"auto"``
    ``min(256, n // 5)`` (at least 1), which makes every epoch at least 5 steps (n >= 5)."""
    if isinstance(batch_size, str):
        return min(AUTO_BATCH_SIZE, max(1, n // STEPS_PER_EPOCH))
    return int(batch_size)


def _standardisation(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std of each feature; a constant feature is divided by 1e-6, not 0."""
    return X.mean(0), X.std(0, correction=0).clamp_min(1e-6)


@dataclass
class _Training:
    """What training carries from one epoch to the next besides the weights."""

    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    dropout: torch.Tensor  # a state of torch's global generator, the only one nn.Dropout draws from


class TorchHead(ClassifierMixin, BaseEstimator):
    """A dense head trained with Adam on standardised features (the recipes' Dense/Linear heads).

    The schedule scales with the data. Adam moves each weight by about ``lr`` a step, so what
    ``epochs`` passes achieve depends on how many steps they are, and a fixed minibatch makes
    that count shrink with the rows: 100 epochs in minibatches of 256 are 1,400 steps on 3,453
    images, but 100 on hymenoptera's 245 and 200 on scikit-learn's 300-point toy set, too few
    from a random start at ``lr=1e-3`` (``check_estimator`` failed: training accuracy 0.73 on
    blobs, where it asks for 0.83). So the default ``batch_size="auto"`` takes
    ``min(256, n // 5)`` rows (at least 1) of the ``n`` an epoch goes over, as scikit-learn's
    ``MLPClassifier`` caps its ``"auto"`` batch by the rows: every epoch is at least 5 steps and
    the default 100 epochs at least 500, whatever the size of the data (on the toy set 3 steps
    an epoch reach 0.83, 5 reach 0.90). From 1,280 rows on it is 256, so larger data train
    exactly as before. A whole number is used as it is. ``partial_fit`` applies the same rule
    to the rows of each call: a streamed batch of 1,280 rows or more is cut into 256s.
    """

    def __init__(self, hidden: int = 0, dropout: float = 0.5, epochs: int = 100, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int | str = "auto", random_state: int = 0):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, X, y, eval_set: tuple | None = None) -> TorchHead:
        """Train ``epochs`` epochs (in minibatches of ``batch_size`` rows; ``"auto"``: of a fifth
        of ``X``, 256 at most); ``history_`` holds each one's mean training loss and, with
        ``eval_set=(X_val, y_val)``, the loss and accuracy on it: the training curves."""
        X, y = self._validate(X, y, reset=True)
        classes, targets = np.unique(y, return_inverse=True)
        Xt = torch.from_numpy(X)
        self._start(classes, *_standardisation(Xt))
        yt = torch.from_numpy(targets)
        if eval_set is not None:
            # A class the head never saw cannot be scored by its loss: such images are left out.
            Xv, yv = validate_data(self, eval_set[0], reset=False, dtype=np.float32), np.asarray(eval_set[1])
            seen = np.isin(yv, classes)
            Xv, yv = torch.from_numpy(Xv[seen]), torch.from_numpy(np.searchsorted(classes, yv[seen]))
        self.history_ = []
        for epoch in range(1, self.epochs + 1):
            row = dict(epoch=epoch, train_loss=self._epoch(Xt, yt))
            if eval_set is not None:
                with torch.inference_mode():
                    logits = self.module_(Xv)
                row.update(val_loss=float(nn.functional.cross_entropy(logits, yv)),
                           val_accuracy=float((logits.argmax(1) == yv).float().mean()))
            self.history_.append(row)
        return self

    def partial_fit(self, X, y, classes=None, scaler: StandardScaler | None = None) -> TorchHead:
        """One epoch over ``X, y`` in shuffled minibatches, continuing from the last call:
        scikit-learn's way to train on data too large for memory, a part at a time.

        The first call needs ``classes``, every class of the whole training data, and sets the
        standardisation: ``scaler``'s mean and std (a ``StandardScaler`` fitted on all the training
        data, for instance by its own ``partial_fit`` over the same parts), else those of ``X``.
        Later calls ignore both. ``epochs`` is for ``fit``; here the caller decides how many passes.
        """
        first = not hasattr(self, "classes_")
        X, y = self._validate(X, y, reset=first)
        if first:
            if classes is None:
                raise ConfigError("the first call to partial_fit needs classes=, every class of "
                                  "the training data")
            if scaler is None:
                mean, scale = _standardisation(torch.from_numpy(X))
            else:
                mean = torch.from_numpy(scaler.mean_)
                scale = torch.from_numpy(np.sqrt(scaler.var_)).clamp_min(1e-6)
            self._start(np.unique(classes), mean, scale)
        unknown = np.setdiff1d(y, self.classes_)
        if len(unknown):
            raise ConfigError(f"labels {unknown.tolist()} are not among the classes "
                              f"{self.classes_.tolist()} given to the first partial_fit")
        # As scikit-learn's MLPClassifier keeps it: the mean training loss of the last pass.
        self.loss_ = self._epoch(torch.from_numpy(X), torch.from_numpy(np.searchsorted(self.classes_, y)))
        return self

    def _validate(self, X, y, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        return X, y

    def check_params(self) -> None:
        """Raise ``ConfigError`` for a parameter no head can be made with: checked as the head is
        fitted, as scikit-learn's own estimators check theirs, and as it is loaded from a file."""
        for name, want, ok in _PARAMS:
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name} must be {want}, not {value!r}")

    def _start(self, classes: np.ndarray, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.check_params()
        self.classes_ = classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.module_ = head_module(self.n_features_in_, len(classes), self.hidden, self.dropout)
        self.module_[0].mean.copy_(mean)
        self.module_[0].scale.copy_(scale)
        self._training = None  # a new module starts from a new optimizer and seeds

    def _epoch(self, X: torch.Tensor, targets: torch.Tensor) -> float:
        """One epoch in shuffled minibatches; returns its mean training loss."""
        # Made on first need rather than in _start: a head loaded from a bundle, or made by
        # as_torch_head, has weights but none of this, and must still be able to partial_fit.
        if getattr(self, "_training", None) is None:
            self._training = _Training(
                torch.optim.Adam(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay),
                torch.Generator().manual_seed(self.random_state),
                torch.Generator().manual_seed(self.random_state).get_state())
        training = self._training
        # The head's own dropout stream swapped in for the epoch: training repeats exactly for a
        # random_state, and leaves the caller's torch random state as it was.
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(training.dropout)
            self.module_.train()
            total = 0.0
            size = minibatch_rows(self.batch_size, len(X))
            for idx in torch.randperm(len(X), generator=training.shuffle).split(size):
                training.optimizer.zero_grad()
                loss = nn.functional.cross_entropy(self.module_(X[idx]), targets[idx])
                loss.backward()
                training.optimizer.step()
                total += loss.item() * len(idx)
            self.module_.eval()
            training.dropout = torch.get_rng_state()
        return total / max(len(X), 1)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with torch.inference_mode():
            return self.module_(torch.from_numpy(X)).softmax(1).numpy()

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(1)]


def as_torch_head(head: BaseEstimator) -> TorchHead:
    """The same fitted classifier as a ``TorchHead`` whose module maps raw features to logits,
    its standardisation folded into the first linear layer: where fine-tuning starts.

    Folding ``W (x - mean) / scale + b`` into ``(W / scale) x + (b - W mean / scale)`` leaves a
    plain linear layer on the features, so the predictions are the same before any step.
    """
    if isinstance(head, TorchHead):
        check_is_fitted(head)
        out = copy.deepcopy(head)
        mean, scale = out.module_[0].mean.double(), out.module_[0].scale.double()
        weight, bias = out.module_[1].weight.double(), out.module_[1].bias.double()
    elif isinstance(head, Pipeline) and [type(s) for _, s in head.steps] == [StandardScaler,
                                                                             LogisticRegression]:
        scaler, logistic = head[0], head[-1]
        weight, bias = torch.from_numpy(logistic.coef_), torch.from_numpy(logistic.intercept_)
        if len(logistic.classes_) == 2:
            # Binary: P(class 1) = sigmoid(z), which is softmax over the logits (-z/2, z/2).
            weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
        out = TorchHead(hidden=0)
        out.classes_, out.n_features_in_ = logistic.classes_, scaler.n_features_in_
        out.module_ = head_module(out.n_features_in_, len(out.classes_), 0, 0.0)
        mean, scale = torch.from_numpy(scaler.mean_), torch.from_numpy(scaler.scale_)
    else:
        raise ConfigError(f"fine-tuning starts from a logistic, linear or mlp head, not "
                          f"{type(head).__name__}: fit one with `featx fit-head --model logistic`")
    first = out.module_[1]
    with torch.no_grad():
        first.weight.copy_(weight / scale)
        first.bias.copy_(bias - (weight / scale) @ mean)
        out.module_[0].mean.zero_()
        out.module_[0].scale.fill_(1.0)
    out.module_.eval()
    out._training = None  # Adam's moments were for the weights before folding
    return out
