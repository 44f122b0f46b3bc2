"""What every stage reports and holds out: the metrics of a split (summed over batches, so that
features read from disk a block at a time are measured as those in memory), and the split of the
training images into train and validation (and a hash that says which image went where)."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from .data.folders import SPLITS
from .errors import ConfigError
from .util.files import cell, uncell
from .util.schema import Grid, Int, Items, Num, Record

log = logging.getLogger(__name__)

# The z of a two-sided 95 % interval.
Z95 = 1.959963984540054
# Top-k accuracy is reported where there are more classes than this k.
TOP_K = 5
# What ``Tally.result`` writes (in bundle.json, beside score's CSV), as a file read back may hold
# it: figures only shown may be NaN, counts are whole numbers.
_SHARE = Num(0, 1, finite=False)
_FIELDS = {"n": Int(), "accuracy": _SHARE, "accuracy_ci95": Items(_SHARE, 2),
           "per_class": Record(other=Record({k: _SHARE for k in ("precision", "recall", "f1")}
                                            | {"support": Int()},
                                            required=("precision", "recall", "f1", "support"))),
           "confusion": Grid()}
# Score's metrics add, where the head was fitted on some of the images (``n_fitted``), the
# metrics of the others, the held-out ones.
METRICS = Record({**_FIELDS, "n_fitted": Int(),
                  "held_out": Record(_FIELDS, required=("n", "accuracy"), other=Num(finite=False))},
                 required=("n", "accuracy"), other=Num(finite=False))


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike the normal approximation it stays inside
    [0, 1] and is honest near 0 and 1, where a good model's accuracy lives."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class Tally:
    """The metrics of one split, added up a batch at a time: what fit-head, fine-tune and score
    report and keep as JSON.

    Everything but the ROC AUC follows from the confusion matrix, the summed log loss and the
    top-k hits, so memory holds those rather than every probability; for two classes it keeps
    the positive class's probability per image (one number each) for the AUC.
    """

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        k = len(self.classes)
        self.confusion = np.zeros((k, k), np.int64)
        self.loss = 0.0
        self.top_hits = 0
        self.binary: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, y: np.ndarray, proba: np.ndarray) -> Tally:
        """Add the true labels ``y`` and the probabilities ``proba`` (a column per class)."""
        k = len(self.classes)
        y = np.asarray(y, np.int64)
        if not len(y):
            return self
        np.add.at(self.confusion, (y, proba.argmax(1)), 1)
        self.loss += float(log_loss(y, proba, labels=range(k), normalize=False))
        if k > TOP_K:
            top = np.argpartition(-proba, TOP_K - 1, axis=1)[:, :TOP_K]
            self.top_hits += int((top == y[:, None]).any(1).sum())
        if k == 2:
            self.binary.append((y, proba[:, 1]))
        return self

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def result(self) -> dict:
        """JSON-ready: n, accuracy with its 95 % Wilson interval, balanced accuracy, log loss,
        macro F1, per-class precision/recall/F1/support, the confusion matrix (rows true), and
        top-5 accuracy (more than 5 classes) or ROC AUC (two classes)."""
        c = self.confusion
        n, correct = int(c.sum()), int(np.trace(c))
        support, predicted, hits = c.sum(1), c.sum(0), np.diag(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, hits / predicted, 0.0)
            recall = np.where(support > 0, hits / support, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        # As scikit-learn averages: recall over the classes present, F1 over those present or
        # predicted.
        present, named = support > 0, (support > 0) | (predicted > 0)
        found = dict(n=n, accuracy=correct / n if n else 0.0,
                     accuracy_ci95=list(wilson_interval(correct, n)),
                     balanced_accuracy=float(recall[present].mean()) if present.any() else 0.0,
                     loss=self.loss / n if n else 0.0,
                     f1_macro=float(f1[named].mean()) if named.any() else 0.0)
        if len(self.classes) > TOP_K:
            found[f"top{TOP_K}_accuracy"] = self.top_hits / n if n else 0.0
        if self.binary:
            y = np.concatenate([b[0] for b in self.binary])
            if len(np.unique(y)) == 2:  # the AUC needs both classes present
                found["roc_auc"] = float(roc_auc_score(y, np.concatenate([b[1] for b in self.binary])))
        found["per_class"] = {name: dict(precision=float(precision[i]), recall=float(recall[i]),
                                         f1=float(f1[i]), support=int(support[i]))
                              for i, name in enumerate(self.classes)}
        found["confusion"] = c.tolist()
        return found


def metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """The metrics of one split held whole in memory (``Tally`` for batches)."""
    return Tally(classes).add(y, proba).result()


def split_digest(paths: list[str], parts: dict[str, np.ndarray]) -> str:
    """Which image went to which split, as one hash: kept in the bundle, so that fine-tuning can
    tell whether it holds out the very images the head was validated on."""
    assigned = sorted(f"{paths[i]}\t{name}" for name, idx in parts.items() for i in idx)
    return hashlib.sha256("\n".join(assigned).encode("utf-8", "surrogateescape")).hexdigest()


def split_indices(splits: np.ndarray, labels: np.ndarray, val_split: float, seed: int
                  ) -> dict[str, np.ndarray]:
    """Row indices per split: the data's own, with a seeded stratified ``val_split`` of train
    held out for validation when the data has no val split.

    A class with a single training image keeps it in train (a head cannot learn a class it has
    never seen), and where there are more classes than the hold-out has images (few images of
    many classes) each class with two or more gives one image at least: both are said in a line.
    """
    # Checked whatever the data: a negative or NaN fraction is a mistake, never "no validation".
    if not 0 <= val_split < 1:
        raise ConfigError(f"`val_split` must be 0 or more and below 1, not {val_split}")
    parts = {name: np.flatnonzero(splits == name) for name in SPLITS}
    if len(parts["val"]) == 0 and val_split > 0:
        train = parts["train"]
        counts = np.bincount(labels[train])
        single = counts[labels[train]] < 2
        rest = train[~single]
        n_classes = len(np.unique(labels[rest]))
        if single.any():
            log.info("%d class(es) have a single training image: kept in train, so validation "
                     "covers the other %d", single.sum(), n_classes)
        if not len(rest):
            kept, held = rest, rest
        elif math.ceil(val_split * len(rest)) >= n_classes and \
                len(rest) - math.ceil(val_split * len(rest)) >= n_classes:
            kept, held = train_test_split(rest, test_size=val_split, random_state=seed,
                                          stratify=labels[rest])
        else:
            kept, held = _one_or_more_per_class(rest, labels, val_split, seed)
            log.info("%d classes, %d images to hold out from: validation holds %d, at least one "
                     "of each class", n_classes, len(rest), len(held))
        parts["train"], parts["val"] = np.sort(np.concatenate([kept, train[single]])), held
    return {k: v for k, v in parts.items() if len(v)}


def _one_or_more_per_class(rows: np.ndarray, labels: np.ndarray, val_split: float, seed: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded hold-out of ``val_split`` of each class's ``rows``, at least one image and never
    the last one."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels[rows]):
        mine = rng.permutation(rows[labels[rows] == c])
        n = min(max(1, round(val_split * len(mine))), len(mine) - 1)
        held.append(mine[:n])
        kept.append(mine[n:])
    return np.concatenate(kept), np.sort(np.concatenate(held))


PREDICTIONS_FILE = "predictions.csv"
HELD_OUT = ("val", "test")  # the splits whose predictions are kept: a head never trained on them


@dataclass
class Predictions:
    """A split's held-out predictions, what the report's pictures of right and wrong images are
    drawn from: the images' paths, true and predicted class numbers, and the predicted class's
    probability."""

    paths: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, paths: list[str], labels: np.ndarray, proba: np.ndarray) -> Predictions:
        predicted = proba.argmax(1)
        return cls(list(paths), np.asarray(labels), predicted,
                   proba[np.arange(len(proba)), predicted])

    @classmethod
    def joined(cls, parts: list[Predictions]) -> Predictions:
        return cls([p for part in parts for p in part.paths],
                   *(np.concatenate([getattr(part, k) for part in parts] or [np.zeros(0)])
                     for k in ("labels", "predicted", "confidence")))


@dataclass(frozen=True)
class PairedGain:
    """How much more accurate one set of predictions is than another on the same ``n`` images:
    both accuracies, the ``gain`` with its 95 % interval (``low``, ``high``), and the images
    newly right (``wins``) and newly wrong (``losses``)."""

    n: int
    before: float
    after: float
    gain: float
    low: float
    high: float
    wins: int
    losses: int


def paired_gain(before: Predictions, after: Predictions, z: float = Z95) -> PairedGain:
    """How much more accurate ``after`` is than ``before`` on the same images, with an interval.

    Only the images on which the two disagree about being right carry information (McNemar's
    view): the gain is (wins - losses) / n, and its interval is the Wilson interval of the share
    of wins among those images, scaled to the gain. It is an interval above zero only when the
    wins outnumber the losses by more than chance would: 5 wins to 0 do it, 6 to 3 do not.
    """
    # By path, on the images both have: a resumed run may have lost or gained one since.
    right = dict(zip(before.paths, before.predicted == before.labels, strict=True))
    common = [i for i, p in enumerate(after.paths) if p in right]
    now = (after.predicted == after.labels)[common]
    was = np.array([right[after.paths[i]] for i in common], bool)
    n, wins, losses = len(now), int((now & ~was).sum()), int((was & ~now).sum())
    low, high = wilson_interval(wins, wins + losses, z)
    share = (wins + losses) / max(n, 1)
    return PairedGain(n=n, before=float(was.mean()) if n else 0.0, after=float(now.mean()) if n else 0.0,
                      gain=(wins - losses) / max(n, 1), low=share * (2 * low - 1),
                      high=share * (2 * high - 1), wins=wins, losses=losses)


def write_predictions(path: Path, found: dict[str, Predictions], classes: list[str]) -> Path:
    """One CSV row per held-out image: split, path, label, predicted class, its probability."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "predicted", "confidence"])
        for split, p in found.items():
            for name, y, k, conf in zip(p.paths, p.labels, p.predicted, p.confidence, strict=True):
                w.writerow([split, *map(cell, (name, classes[y], classes[k])), f"{conf:.6f}"])
    return path


def read_predictions(path: Path, classes: list[str]) -> dict[str, Predictions]:
    number = {c: i for i, c in enumerate(classes)}
    rows: dict[str, list[list[str]]] = {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            path, label, predicted = map(uncell, (row["path"], row["label"], row["predicted"]))
            rows.setdefault(row["split"], []).append(
                [path, number[label], number[predicted], float(row["confidence"])])
    return {split: Predictions([r[0] for r in got], *(np.array([r[i] for r in got]) for i in (1, 2, 3)))
            for split, got in rows.items()}
