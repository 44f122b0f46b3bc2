"""What a fine-tune records, typed: a row of its history per epoch, a snapshot of an epoch it may
keep, each candidate it weighs (the head, the best epoch, their WiSE-FT mixes) and the verdict.
Each is kept as a plain dict (``to_dict``) where it is saved: in the checkpoint, in
``history.csv`` and ``history.json``, and in ``bundle.json``."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..evaluation import PairedGain, Predictions


def plain(record) -> dict:
    """A record's fields as a dict, its values as they are (tensors are not copied)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass(frozen=True)
class HistoryRow:
    """One epoch's figures; epoch 0 is the head as fit-head left it, which trained nothing."""

    epoch: int
    lr: float | None
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float | None

    def to_dict(self) -> dict:
        return plain(self)


@dataclass(frozen=True)
class Snapshot:
    """What is kept of an epoch (the first, the best): its validation metrics and predictions
    (``Predictions`` as a dict of arrays, as a checkpoint keeps them), and the weights training
    changes."""

    epoch: int
    metrics: dict
    predictions: dict
    state: dict

    def to_dict(self) -> dict:
        return plain(self)

    def held(self) -> Predictions:
        """Its validation predictions, as ``Predictions`` again."""
        import numpy as np

        p = self.predictions
        return Predictions(list(p["paths"]),
                           *(np.asarray(p[k]) for k in ("labels", "predicted", "confidence")))


@dataclass(frozen=True)
class Candidate:
    """What could be kept, at weight ``alpha`` on the way from the head (0) to the best epoch
    (1), with its validation metrics and predictions."""

    alpha: float
    metrics: dict
    predictions: Predictions


@dataclass(frozen=True)
class Mix:
    """A candidate as the bundle records it."""

    alpha: float
    val_accuracy: float
    val_loss: float

    def to_dict(self) -> dict:
        return plain(self)


@dataclass(frozen=True)
class Verdict(PairedGain):
    """The best fine-tuned candidate's paired gain over the head on validation, its ``epoch``
    and mixing weight ``alpha``, and what the bundle ``kept``: head or finetuned."""

    epoch: int = 0
    alpha: float = 1.0
    kept: str = "head"

    def to_dict(self) -> dict:
        return plain(self)
