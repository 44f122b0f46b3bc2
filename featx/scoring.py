"""Stage three: classify every image under a folder with a saved bundle, and write a CSV.

The folder's features are kept in a cache of its own under ``cache/scores/``, made and updated
by the same runner as ``extract``'s, so scoring a folder again only reads the images it has not
seen.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from . import cache as cache_mod
from .backbones import FeatureExtractor, load_backbone
from .bundle import Bundle, load_bundle
from .data import scan_unlabelled
from .errors import BundleError, WeightsUnavailableError
from .execution import DEFAULT_EXECUTION
from .extraction import ExtractResult, resolve_device, update_cache
from .plots import confusion_matrix_png


@dataclass
class ScoreResult:
    csv: Path
    n_scored: int
    n_failed: int
    seconds: float
    predicted: dict[str, int]          # class -> number of images predicted as it
    accuracy: float | None = None      # over images whose folder names their class
    n_labelled: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    plot: Path | None = None
    features: ExtractResult | None = None  # how the folder's feature cache was brought up to date

    def summary(self) -> str:
        rate = (self.n_scored + self.n_failed) / self.seconds if self.seconds else 0.0
        lines = [f"scored {self.n_scored} images ({self.n_failed} skipped) in {self.seconds:.1f} s, "
                 f"{rate:.1f} img/s -> {self.csv}",
                 *([f"features: {self.features.summary()}"] if self.features else []),
                 "predicted: " + ", ".join(f"{c} {n}" for c, n in self.predicted.items())]
        if self.accuracy is not None:
            lines.append(f"accuracy on {self.n_labelled} labelled images: {self.accuracy:.4f}")
        lines += [f"skipped {path}: {err}" for path, err in self.failed]
        return "\n".join(lines)


def backbone_for(bundle: Bundle, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """The backbone a bundle's head was fitted on, refusing one whose features would differ."""
    ident = bundle.identity
    # A fine-tuned bundle names its own backbone file, relative to the bundle folder; other
    # bundles name the file their cache was extracted with, as it was given.
    stored = ident.get("weights_path")
    known = next((p for p in ([Path(bundle.path or ".") / stored, Path(stored)] if stored else [])
                  if p.is_file()), None)
    if weights is None and ident["weights_sha256"] == "random-init":
        weights = "none"
    elif weights is None and known is not None:
        weights = known
    try:
        model = load_backbone(ident["backbone"], weights, ident["pool"])
    except WeightsUnavailableError as e:
        raise BundleError(f"{e} (the bundle {bundle.path} needs weights with sha256 "
                          f"{ident['weights_sha256']})") from e
    now = model.identity()
    key = cache_mod.mismatch(ident, now)
    if key is not None:
        fix = ("pass --weights with the file the bundle was made with" if key == "weights_sha256"
               else "extract the training data again and fit a new head")
        raise BundleError(f"the bundle {bundle.path} was fitted on features with {key}="
                          f"{ident[key]}, but the backbone loaded now has {key}={now[key]}: {fix}")
    return model


def score(folder: str | os.PathLike, bundle: str | os.PathLike | Bundle,
          out: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
          device: str = "auto", batch_size: int | None = None, workers: int | None = None,
          progress: bool = True, cache_dir: str | os.PathLike = "cache",
          execution: str = DEFAULT_EXECUTION, decode: str = "auto") -> ScoreResult:
    """Score every image below ``folder`` (recursively) and write one CSV row per image.

    Images whose first subfolder is named like one of the bundle's classes count as labelled,
    and the accuracy over them is reported. The folder's features are cached under
    ``cache_dir/scores/`` and reused for every image unchanged since the last time.
    ``execution`` and ``decode`` are as for ``extract``.
    """
    start = time.perf_counter()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    dataset = scan_unlabelled(folder, tuple(b.classes))
    model = backbone_for(b, weights)
    dev = resolve_device(device)
    labelled = any(s.label >= 0 for s in dataset.samples)
    folder = Path(folder)
    scores = Path(cache_dir) / "scores"
    csv_path = Path(out) if out else scores / f"{folder.resolve().name}-{Path(b.path or 'bundle').name}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    extracted = update_cache(cache_mod.default_path(dataset.root, model.identity(), "float32", scores),
                             dataset, model, "float32", dev, batch_size, workers, progress, desc="score",
                             execution=execution, decode=decode)
    fc = cache_mod.open_cache(extracted.path, identity=b.identity)
    proba = b.predict_proba(fc.features)
    rows = dict(zip(fc.paths, proba, strict=True))
    errors = dict(fc.failed)

    counts = np.zeros(len(b.classes), int)
    truth: list[int] = []
    guess: list[int] = []
    # A file name that is not valid UTF-8 is written as its own bytes, as the file system has it.
    with open(csv_path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *(["label"] if labelled else []),
                    *(f"p_{c}" for c in b.classes), "error"])
        for s in dataset.samples:
            path = s.path.as_posix()
            label = [b.classes[s.label] if s.label >= 0 else ""] if labelled else []
            if path in errors:
                w.writerow([path, "", *label, *[""] * len(b.classes), errors[path]])
                continue
            p = rows[path]
            k = int(p.argmax())
            counts[k] += 1
            if s.label >= 0:
                truth.append(s.label)
                guess.append(k)
            w.writerow([path, b.classes[k], *label, *(f"{v:.6f}" for v in p), ""])

    result = ScoreResult(csv_path, len(rows), len(errors), time.perf_counter() - start,
                         {c: int(n) for c, n in zip(b.classes, counts, strict=True)},
                         failed=fc.failed, features=extracted)
    if truth:
        result.accuracy = float(np.mean(np.array(truth) == np.array(guess)))
        result.n_labelled = len(truth)
        matrix = confusion_matrix(truth, guess, labels=range(len(b.classes)))
        result.plot = confusion_matrix_png(matrix, b.classes, csv_path.with_suffix(".png"),
                                           f"{folder.name}: accuracy {result.accuracy:.3f}")
    return result
