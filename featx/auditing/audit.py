"""``featx audit``: what may be wrong in a cache's images, found from their features alone:
labels that out-of-fold heads doubt (``labels``), near-duplicates, and the same image in two
splits (``duplicates``), written as one CSV (``reporting.audit_csv``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.reader import FeatureCache, digests, open_cache
from ..data.folders import SPLITS
from ..errors import ConfigError, DataError
from ..fitting.options import SEED
from ..reporting.audit_csv import START, Finding, audit_path, write_audit
from ..util.files import check_csv_path
from .duplicates import embedded, near_pairs, same_bytes, whitens
from .labels import out_of_fold, suspects
from .options import FOLDS, SIMILARITY


@dataclass
class AuditResult:
    """What ``audit`` found, each finding as the CSV ``csv`` holds it."""

    csv: Path
    n_images: int
    split_counts: dict[str, int]
    classes: list[str]
    folds: int
    C: float                   # the out-of-fold heads' regularisation, chosen by their log loss
    accuracy: float            # of the out-of-fold predictions, over the labelled images
    proba: np.ndarray          # out-of-fold class probabilities, a row per cache row (NaN: no label)
    labels: list[Finding]      # suspected label errors, the most suspicious first
    duplicates: list[Finding]  # pairs within a split, the most similar first
    leaks: list[Finding]       # pairs across splits, the most similar first
    similarity: float          # the least similarity of a pair
    whitened: bool             # whether the features were whitened for the similarity
    seconds: float


def audit(cache: str | os.PathLike, out: str | os.PathLike | None = None, folds: int = FOLDS,
          seed: int = SEED, similarity: float = SIMILARITY, force: bool = False) -> AuditResult:
    """Find what may be wrong in a cache's images, and write it as a CSV (default: beside the
    cache, ``NAME.audit.csv``).

    Suspected label errors: the images whose class, predicted by logistic heads fitted on the
    other ``folds`` (stratified, seeded by ``seed``), is not the one given, ranked by the
    probability of the given label, lowest first. Near-duplicates: pairs of images whose
    features' similarity is ``similarity`` or more (centred, and whitened where the cache has
    the rows), and pairs with the very same bytes; those in two splits are leaks. ``force``:
    replace an ``out`` featx did not write (never the cache).
    """
    start = time.perf_counter()
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"`folds` must be a whole number of 2 or more, not {folds!r}")
    if not 0 < similarity <= 1:
        raise ConfigError(f"`similarity` must be above 0 and at most 1, not {similarity}")
    fc = open_cache(cache)
    path = Path(out) if out else audit_path(fc.path)
    check_csv_path(path, [fc.path], force, START)
    labelled = _labelled(fc, folds)
    features = np.asarray(fc.features)
    present, y = np.unique(fc.labels[labelled], return_inverse=True)
    found, C = out_of_fold(features[labelled], y, len(present), folds, seed)
    proba = np.full((len(fc.labels), len(fc.classes)), np.nan)
    proba[labelled] = 0.0
    proba[np.ix_(labelled, present)] = found
    labels = [_doubted(fc, row, proba[row]) for row in labelled[suspects(found, y)]]
    pairs = _pairs(fc, features, similarity)
    try:
        write_audit(path, labels + pairs["duplicate"] + pairs["leak"])
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror or e}): choose another `out`") from e
    splits = fc.splits.tolist()
    return AuditResult(path, len(fc.paths), {s: splits.count(s) for s in SPLITS if s in splits},
                       list(fc.classes), folds, C, float(np.mean(found.argmax(1) == y)), proba,
                       labels, pairs["duplicate"], pairs["leak"], similarity,
                       whitens(len(fc.paths)), time.perf_counter() - start)


def _labelled(fc: FeatureCache, folds: int) -> np.ndarray:
    """The rows with a label, refused in one line unless out-of-fold heads can learn from them:
    two classes or more, each with ``folds`` images or more."""
    if not len(fc.labels):
        raise DataError(f"{fc.path} holds no features: all {len(fc.failed)} of its images were "
                        f"skipped as unreadable (`featx check DATA` lists why)")
    rows = np.flatnonzero(fc.labels >= 0)
    counts = np.bincount(fc.labels[rows], minlength=len(fc.classes))
    present = np.flatnonzero(counts)
    if not len(present):
        raise DataError(f"{fc.path} holds no labels (its images are in no class folder, as in a "
                        f"cache `featx score` made): audit the cache `featx extract` made of a "
                        f"folder with one subfolder per class, or with --labels")
    if len(present) == 1:
        raise DataError(f"{fc.path} holds images of one class only ({fc.classes[present[0]]}): "
                        f"telling a wrong label takes two classes or more")
    few = [i for i in present if counts[i] < folds]
    if few:
        named = ", ".join(f"{fc.classes[i]} {counts[i]}" for i in few[:5])
        more = f" and {len(few) - 5} more" if len(few) > 5 else ""
        raise DataError(f"{fc.path}: {len(few)} class(es) have fewer images than the {folds} "
                        f"folds ({named}{more}), and each fold's heads must learn every class: "
                        f"lower `folds`, or add images")
    return rows


def _doubted(fc: FeatureCache, row: int, proba: np.ndarray) -> Finding:
    given = fc.labels[row]
    return Finding("label", fc.paths[row], str(fc.splits[row]), fc.classes[given],
                   fc.classes[int(proba.argmax())], float(1 - proba[given]))


def _pairs(fc: FeatureCache, features: np.ndarray, similarity: float) -> dict[str, list[Finding]]:
    """The pairs of images alike in their features or bytes, by kind, the most similar first."""
    first, second, sims = near_pairs(embedded(features), similarity)
    found = {(int(a), int(b)): min(float(s), 1.0) for a, b, s in zip(first, second, sims, strict=True)}
    for a, b in zip(*same_bytes(digests(fc.path)), strict=True):
        found[int(a), int(b)] = 1.0
    order = {s: i for i, s in enumerate(SPLITS)}
    by_kind: dict[str, list[Finding]] = {"duplicate": [], "leak": []}
    for (a, b), score in sorted(found.items(), key=lambda item: (-item[1], item[0])):
        # The image of the earlier split first: train's copy, then the held-out one it leaks to.
        a, b = sorted((a, b), key=lambda r: (order.get(fc.splits[r], len(order)), r))
        kind = "duplicate" if fc.splits[a] == fc.splits[b] else "leak"
        split = fc.splits[a] if kind == "duplicate" else f"{fc.splits[a]}/{fc.splits[b]}"
        by_kind[kind].append(Finding(kind, fc.paths[a], str(split), _class(fc, a), _class(fc, b),
                                     score, fc.paths[b]))
    return by_kind


def _class(fc: FeatureCache, row: int) -> str:
    return fc.classes[fc.labels[row]] if fc.labels[row] >= 0 else ""

