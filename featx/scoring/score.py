"""Stage four: classify every image under a folder with a saved bundle, and write a CSV.

The folder's features are kept in a cache of its own under ``cache/scores/``, made and updated
by the same runner as ``extract``'s, so scoring a folder again only reads the images it has not
seen.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import Bundle, backbone_for, image_keys, load_bundle
from ..cache.format import default_path
from ..cache.reader import digests, open_cache
from ..data.folders import Dataset
from ..data.manifest import Manifest, to_score
from ..errors import ConfigError
from ..evaluation import Tally
from ..extraction.engine import Engine
from ..extraction.execution import exported
from ..extraction.placement import place
from ..extraction.update import ExtractResult, update_cache
from ..reporting.plots import confusion_matrix_png
from ..runtime import RayEngine, Runtime
from ..util.files import (
    METRICS_START,
    PNG_START,
    cell,
    check_csv_path,
    check_replaceable,
    durable_write,
    metrics_path,
    result_name,
)


@dataclass
class ScoreResult:
    csv: Path
    n_scored: int
    n_failed: int
    seconds: float
    predicted: dict[str, int]          # class -> number of images predicted as it
    metrics: dict | None = None        # over the labelled images, held out or not (``Tally``)
    failed: list[tuple[str, str]] = field(default_factory=list)
    plot: Path | None = None
    features: ExtractResult | None = None  # how the folder's feature cache was brought up to date

    @property
    def accuracy(self) -> float | None:
        return self.metrics["accuracy"] if self.metrics else None

    @property
    def n_labelled(self) -> int:
        return self.metrics["n"] if self.metrics else 0

    @property
    def n_fitted(self) -> int:
        """Labelled images the bundle's head was fitted on: ``metrics`` is not held out for them."""
        return self.metrics.get("n_fitted", 0) if self.metrics else 0

    @property
    def held_out(self) -> dict | None:
        """The metrics of the labelled images the head was not fitted on (all of them where it was
        fitted on none)."""
        return self.metrics.get("held_out") if self.n_fitted else self.metrics
def score(folder: str | os.PathLike, bundle: str | os.PathLike | Bundle,
          out: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
          cache_dir: str | os.PathLike = "cache", runtime: Runtime | None = None,
          engine: str | RayEngine = "local", dtype: str | None = None, force: bool = False,
          labels: str | os.PathLike | Manifest | None = None) -> ScoreResult:
    """Score every image below ``folder`` (recursively) and write one CSV row per image.

    Images whose first subfolder is named like one of the bundle's classes count as labelled,
    and the accuracy over them is reported. The folder's features are cached under
    ``cache_dir/scores/`` and reused for every image unchanged since the last time.
    ``runtime`` and ``engine`` are as for ``extract``. ``dtype``: the features' precision (None:
    the one the bundle's head was fitted on). ``force``: replace an ``out`` (or the metrics and
    picture beside it) that featx did not write; the bundle's files and the features are never
    replaced. ``labels``: a manifest (``extract``'s) naming the images to score and their labels,
    instead of every image below ``folder`` labelled by its subfolder.
    """
    start = time.perf_counter()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    # A missing device, or what cannot run on it, fails before any scan or model load.
    runs = _placed(b, runtime, engine, dtype)
    dataset = to_score(folder, tuple(b.classes), labels)
    model = backbone_for(b, weights)
    folder, scores = Path(folder), Path(cache_dir) / "scores"
    named = Path(b.path or "bundle")
    csv_path = Path(out) if out else scores / result_name(folder, named.name, str(named.resolve()))
    features = default_path(dataset.root, model.identity(), runs.placement.dtype, scores)
    inputs = [*b.own_files(), features]
    check_csv_path(csv_path, inputs, force)
    check_replaceable(metrics_path(csv_path), METRICS_START, inputs, force)
    check_replaceable(csv_path.with_suffix(".png"), PNG_START, inputs, force)
    extracted = update_cache(features, dataset, model, runs, desc="score")
    fc = open_cache(extracted.path, identity=b.identity, in_memory=False)
    proba = np.zeros((len(fc.paths), len(b.classes)))
    for rows, features in fc.features.blocks():  # a block at a time, as fit-head reads
        proba[rows] = b.predict_proba(features)
    rows = dict(zip(fc.paths, proba, strict=True))
    try:
        found, counts = _write(csv_path, dataset, b, rows, dict(fc.failed),
                               _fitted_on(b, extracted.path, fc.paths))
    except OSError as e:
        raise ConfigError(f"cannot write {csv_path} ({e.strerror or e}): choose another `out`; "
                          f"the features are kept in {extracted.path}, so the next run only "
                          f"classifies") from e
    n_failed = len(fc.failed) - len(dataset.refused)  # images; the manifest's rows are no images
    result = ScoreResult(csv_path, len(rows), n_failed, time.perf_counter() - start,
                         {c: int(n) for c, n in zip(b.classes, counts, strict=True)},
                         metrics=found, failed=fc.failed, features=extracted)
    if found:
        result.plot = confusion_matrix_png(np.array(found["confusion"]), b.classes,
                                           csv_path.with_suffix(".png"),
                                           f"{folder.name}: accuracy {found['accuracy']:.3f}")
    return result


def _write(csv_path: Path, dataset: Dataset, b: Bundle, rows: dict[str, np.ndarray], errors: dict[str, str],
           fitted: set[str]) -> tuple[dict | None, np.ndarray]:
    """The CSV and, where images are labelled, the metrics beside it; returns those metrics and
    how many images each class was predicted for."""
    tally, held, counts = _write_csv(csv_path, dataset, b.classes, rows, errors, fitted)
    found = tally.result() if tally.confusion.any() else None
    if found and held.n < tally.n:  # the head was fitted on some: say which figure is held out
        found |= {"n_fitted": tally.n - held.n, **({"held_out": held.result()} if held.n else {})}
    if found:
        with durable_write(metrics_path(csv_path)) as tmp:
            tmp.write_text(json.dumps(found, indent=1))
    else:  # an earlier run's, for other images: it would be read as this one's
        metrics_path(csv_path).unlink(missing_ok=True)
        csv_path.with_suffix(".png").unlink(missing_ok=True)
    return found, counts


def _fitted_on(b: Bundle, features: Path, paths: list[str]) -> set[str]:
    """Which of the images (``paths``, the rows of the cache ``features``) ``b``'s head was
    fitted on: by their bytes, as the bundle records them, so wherever they are now."""
    keys = b.fitted_images()
    if keys is None:
        return set()
    known = np.isin(image_keys(digests(features)), keys)
    return {paths[i] for i in np.flatnonzero(known)}


def _placed(b: Bundle, runtime: Runtime | None, engine: str | RayEngine, dtype: str | None) -> Engine:
    """The engine computing features in the precision asked, else in the one ``b``'s head was
    fitted on, refusing in one line where that cannot run here."""
    if dtype is not None and dtype != b.dtype:
        return place(runtime, engine, dtype)
    try:
        runs = place(runtime, engine, b.dtype, "the precision the bundle's head was fitted on")
    except ConfigError as e:
        if b.dtype == "float32":  # what fails is not the precision
            raise
        raise ConfigError(f"{b.path or 'the bundle'}: its head was fitted on {b.dtype} features, "
                          f"which cannot be computed here ({e}); pass `dtype` float32 to score "
                          f"with features of that precision instead") from e
    if b.identity.quantized:  # the int8 graph the head's features came from, and no other
        runs = dataclasses.replace(runs, placement=dataclasses.replace(
            runs.placement, quantized=quantized_graph(b)))
    return runs


def quantized_graph(b: Bundle) -> Path:
    """The int8 graph ``b``'s head was fitted on: the copy in the bundle, else the one this
    machine quantized; refused in one line where neither is."""
    name = b.identity.quantized
    if b.path is not None and name in b.files:
        return b.path / name
    if (exported.folder() / name).is_file():
        return exported.folder() / name
    raise ConfigError(f"{b.path or 'the bundle'}: its head was fitted on the features of the int8 "
                      f"graph {name}, which is neither in the bundle nor in {exported.folder()}: "
                      f"pass `dtype` float32 to score with float32 features instead")


def _write_csv(path: Path, dataset: Dataset, classes: list[str], rows: dict[str, np.ndarray],
               errors: dict[str, str], fitted: set[str]) -> tuple[Tally, Tally, np.ndarray]:
    """One row per image: its path, the predicted class, its label where its folder (or the
    manifest) names one, each class's probability, and why it was skipped; then one per row of
    the manifest not used, with why; returns the metrics of the labelled images, of those of
    them the head was not fitted on (``fitted``), and how many images each class was predicted
    for."""
    labelled = any(s.label >= 0 for s in dataset.samples)
    counts = np.zeros(len(classes), int)
    truth: list[int] = []
    known: list[np.ndarray] = []
    held: list[bool] = []
    # A file name that is not valid UTF-8 is written as its own bytes, as the file system has it.
    with durable_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                          errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *(["label"] if labelled else []),
                    *(f"p_{c}" for c in classes), "error"])
        for s in dataset.samples:
            name = s.path.as_posix()
            label = [cell(classes[s.label]) if s.label >= 0 else ""] if labelled else []
            if name in errors:
                w.writerow([cell(name), "", *label, *[""] * len(classes), cell(errors[name])])
                continue
            p = rows[name]
            k = int(p.argmax())
            counts[k] += 1
            if s.label >= 0:
                truth.append(s.label)
                known.append(p)
                held.append(name not in fitted)
            w.writerow([cell(name), cell(classes[k]), *label, *(f"{v:.6f}" for v in p), ""])
        for name, why in dataset.refused:
            w.writerow([cell(name), "", *[""] * labelled, *[""] * len(classes), cell(why)])
    tally, held_out = Tally(classes), Tally(classes)
    if truth:
        truth, known, held = np.array(truth), np.array(known), np.array(held)
        tally.add(truth, known)
        held_out.add(truth[held], known[held])
    return tally, held_out, counts
