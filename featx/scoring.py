"""Stage three: classify every image under a folder with a saved bundle, streaming to CSV."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from .backbones import FeatureExtractor, load_backbone
from .bundle import Bundle, load_bundle
from .cache import IDENTITY_KEYS
from .data import scan_unlabelled
from .errors import BundleError, WeightsUnavailableError
from .extraction import resolve_device, run_batches
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

    def summary(self) -> str:
        rate = (self.n_scored + self.n_failed) / self.seconds if self.seconds else 0.0
        lines = [f"scored {self.n_scored} images ({self.n_failed} skipped) in {self.seconds:.1f} s, "
                 f"{rate:.1f} img/s -> {self.csv}",
                 "predicted: " + ", ".join(f"{c} {n}" for c, n in self.predicted.items())]
        if self.accuracy is not None:
            lines.append(f"accuracy on {self.n_labelled} labelled images: {self.accuracy:.4f}")
        lines += [f"skipped {path}: {err}" for path, err in self.failed]
        return "\n".join(lines)


def backbone_for(bundle: Bundle, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """The backbone a bundle's head was fitted on, refusing one whose features would differ."""
    ident = bundle.identity
    # A fine-tuned bundle names its own backbone file, relative to the bundle folder.
    known = Path(bundle.path or ".") / ident["weights_path"] if ident.get("weights_path") else None
    if weights is None and ident["weights_sha256"] == "random-init":
        weights = "none"
    elif weights is None and known is not None and known.is_file():
        weights = known
    try:
        model = load_backbone(ident["backbone"], weights, ident["pool"])
    except WeightsUnavailableError as e:
        raise BundleError(f"{e} (the bundle {bundle.path} needs weights with sha256 "
                          f"{ident['weights_sha256']})") from e
    now = model.identity()
    for key in IDENTITY_KEYS:
        if key in ident and now[key] != ident[key]:
            fix = ("pass --weights with the file the bundle was made with" if key == "weights_sha256"
                   else "extract the training data again and fit a new head")
            raise BundleError(f"the bundle {bundle.path} was fitted on features with {key}="
                              f"{ident[key]}, but the backbone loaded now has {key}={now[key]}: {fix}")
    return model


def score(folder: str | os.PathLike, bundle: str | os.PathLike | Bundle,
          out: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
          device: str = "auto", batch_size: int = 32, workers: int | None = None,
          progress: bool = True) -> ScoreResult:
    """Score every image below ``folder`` (recursively) and write one CSV row per image.

    Images whose first subfolder is named like one of the bundle's classes count as labelled,
    and the accuracy over them is reported.
    """
    start = time.perf_counter()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    dataset = scan_unlabelled(folder, tuple(b.classes))
    model = backbone_for(b, weights)
    dev = resolve_device(device)
    labelled = any(s.label >= 0 for s in dataset.samples)
    folder = Path(folder)
    csv_path = Path(out) if out else Path("cache") / "scores" / \
        f"{folder.resolve().name}-{Path(b.path or 'bundle').name}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    counts = np.zeros(len(b.classes), int)
    truth: list[int] = []
    guess: list[int] = []
    failed: list[tuple[str, str]] = []
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *(["label"] if labelled else []),
                    *(f"p_{c}" for c in b.classes), "error"])
        for batch in run_batches(model, dataset, dev, batch_size, workers, progress, desc="score"):
            proba = b.predict_proba(batch.features) if len(batch.indices) else np.empty((0, 0))
            for i, p in zip(batch.indices, proba, strict=True):
                s, k = dataset.samples[i], int(p.argmax())
                counts[k] += 1
                if s.label >= 0:
                    truth.append(s.label)
                    guess.append(k)
                label = [b.classes[s.label] if s.label >= 0 else ""] if labelled else []
                w.writerow([s.path.as_posix(), b.classes[k], *label, *(f"{v:.6f}" for v in p), ""])
            for i, err in batch.failed:
                path = dataset.samples[i].path.as_posix()
                failed.append((path, err))
                w.writerow([path, "", *([""] if labelled else []), *[""] * len(b.classes), err])

    result = ScoreResult(csv_path, len(dataset.samples) - len(failed), len(failed),
                         time.perf_counter() - start,
                         {c: int(n) for c, n in zip(b.classes, counts, strict=True)}, failed=failed)
    if truth:
        result.accuracy = float(np.mean(np.array(truth) == np.array(guess)))
        result.n_labelled = len(truth)
        matrix = confusion_matrix(truth, guess, labels=range(len(b.classes)))
        result.plot = confusion_matrix_png(matrix, b.classes, csv_path.with_suffix(".png"),
                                           f"{folder.name}: accuracy {result.accuracy:.3f}")
    return result
