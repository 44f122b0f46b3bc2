"""Stage two: fit a head on a feature cache, evaluate it on each split, and write a model bundle.

A cache whose features fit the memory budget is read whole; a larger one is streamed from disk a
block of rows at a time, to the heads that can learn that way (the torch heads, by ``partial_fit``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle, check_out
from ..cache.reader import FeatureCache, open_cache
from ..errors import ConfigError, DataError, FeatxError, first_line
from ..evaluation import split_digest, split_indices
from ..files import size_text
from ..heads.registry import DEFAULT_HEAD, make_head
from ..heads.torch_head import TorchHead
from ..plots import confusion_matrix_png
from .options import MAX_MEMORY, SEED, STREAM_EPOCHS, VAL_SPLIT
from .streaming import batch_rows, evaluate, fit_streamed

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    bundle: Path
    metrics: dict        # split -> {"n", "accuracy", "loss"}
    seconds: float
    plot: Path | None

    def summary(self) -> str:
        lines = [f"{split:5s}  n={m['n']:<6d} accuracy={m['accuracy']:.4f}  loss={m['loss']:.4f}"
                 for split, m in self.metrics.items()]
        return "\n".join([*lines, f"fitted in {self.seconds:.1f} s -> {self.bundle}"])


def _train_rows(fc: FeatureCache, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The training rows, refused unless every class has some."""
    train = parts.get("train", np.array([], int))
    present = np.unique(fc.labels[train])
    if len(present) < 2:
        raise DataError(f"{fc.path}: the training data has {len(present)} class(es); a classifier "
                        f"needs at least two class subfolders with images")
    missing = sorted(set(range(len(fc.classes))) - set(present.tolist()))
    if missing:
        raise DataError(f"{fc.path}: no training images for class(es) "
                        f"{', '.join(fc.classes[i] for i in missing)}: add some to train/")
    return train


def _fit(head, model: str, fc: FeatureCache, train: np.ndarray, params: dict, max_memory: int):
    """Fit ``head`` on the rows ``train``, in memory or streamed; return the features as they
    stay for evaluation (in memory, or on disk) and the batch size to read them in."""
    features = fc.features
    size = batch_rows(features, max_memory)
    if features.nbytes <= max_memory:
        features = features.read()
        head.fit(features[train], fc.labels[train])
    elif isinstance(head, TorchHead):
        if "epochs" not in params:
            head.set_params(epochs=STREAM_EPOCHS)
        log.info("%s: features of %s, more than the %s memory budget: streaming them in batches "
                 "of %d rows", fc.path, size_text(features.nbytes), size_text(max_memory), size)
        fit_streamed(head, features, fc.labels, train, size)
    else:
        raise ConfigError(
            f"{fc.path}: its features take {size_text(features.nbytes)} ({len(features):,} x "
            f"{features.shape[1]:,} {features.dtype}), more than the {size_text(max_memory)} memory "
            f"budget, and the {model} head needs them all in memory: use --model linear or mlp, "
            f"which stream them from disk, or raise --max-memory")
    return features, size


def fit_head(cache: str | os.PathLike, model: str = DEFAULT_HEAD, params: dict | None = None,
             val_split: float = VAL_SPLIT, seed: int = SEED, out: str | os.PathLike | None = None,
             max_memory: int = MAX_MEMORY) -> FitResult:
    """Fit head ``model`` on the cache's train split and write a bundle (default: beside the cache).

    Validation uses the cache's ``val`` split, else a seeded stratified ``val_split`` of train;
    the ``test`` split, when present, is only evaluated. Features larger than ``max_memory``
    bytes are streamed from disk: the linear and mlp heads learn from them a shuffled batch of
    about an eighth of ``max_memory`` at a time, for ``STREAM_EPOCHS`` epochs unless ``params``
    say; the other heads need them all in memory and refuse. Evaluation goes by the same batches.
    """
    start = time.perf_counter()
    params = params or {}
    fc = open_cache(cache, in_memory=False)
    path = Path(out) if out else Path(fc.path).with_suffix(f".{model}")
    check_out(path)
    head = make_head(model, **params)
    if not len(fc.labels):
        raise DataError(f"{fc.path} holds no features: all {len(fc.failed)} of its images were "
                        f"skipped as unreadable (`featx check DATA` lists why)")
    parts = split_indices(fc.splits, fc.labels, val_split, seed)
    bundle = Bundle(identity=fc.identity, classes=fc.classes, head=head, model=model,
                    info=dict(cache=str(Path(fc.path).resolve()), params=params,
                              val_split=val_split if "val" not in fc.splits else None, seed=seed,
                              split_sha256=split_digest(fc.paths, parts)))
    try:  # scikit-learn checks most parameters only as it fits, and some (n_neighbors) as it predicts
        features, size = _fit(head, model, fc, _train_rows(fc, parts), params, max_memory)
        bundle.metrics, confusion = evaluate(bundle, features, fc.labels, parts, size)
    except FeatxError:
        raise
    except (ValueError, TypeError) as e:
        given = " ".join(f"-p {k}={v}" for k, v in params.items()) or "its default parameters"
        raise ConfigError(f"the {model} head cannot be fitted with {given} ({first_line(e)}): "
                          f"change them") from e
    shown = "val" if "val" in parts else "train"
    picture = f"confusion_{shown}.png"
    bundle.save(path, lambda folder: confusion_matrix_png(
        confusion[shown], fc.classes, folder / picture,
        f"{model} on {fc.attrs['backbone']}: {shown} accuracy {bundle.metrics[shown]['accuracy']:.3f}"))
    plot = path / picture
    return FitResult(path, bundle.metrics, time.perf_counter() - start, plot)
