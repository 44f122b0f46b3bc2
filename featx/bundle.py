"""The model bundle: a folder holding everything needed to classify raw images later, and the
backbone it needs, refused if its features would differ.

    bundle.json    backbone identity (name, weights sha256, preprocessing, pooling), class names,
                   the head's kind and parameters, metrics, provenance
    head.joblib    a scikit-learn head, or
    head.pt        a torch head's tensors (loaded with weights_only=True)
    *.png          plots written beside it (confusion matrix)
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from .backbones.extractor import FeatureExtractor, load_backbone
from .errors import BundleError, WeightsUnavailableError
from .files import durable_write
from .heads.storage import load_head, save_head
from .identity import RANDOM_INIT, FeatureIdentity
from .version import __version__

FORMAT_VERSION = 1


@dataclass
class Bundle:
    identity: FeatureIdentity   # what the features the head was fitted on are
    classes: list[str]
    head: BaseEstimator
    model: str                  # the head's name in heads.registry.HEADS
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    path: Path | None = None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities with one column per entry of ``classes``, in that order."""
        proba = np.zeros((len(features), len(self.classes)), np.float64)
        proba[:, self.head.classes_] = self.head.predict_proba(features)
        # float32 heads' rows sum to one only to float32 precision; metrics check at float64's.
        return proba / proba.sum(1, keepdims=True)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        head_meta = save_head(self.head, path)
        doc = dict(format_version=FORMAT_VERSION, featx_version=__version__,
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   backbone=self.identity.to_dict(), classes=self.classes,
                   head=dict(model=self.model, **head_meta), metrics=self.metrics, **self.info)
        with durable_write(path / "bundle.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=2, default=float))
        self.path = path
        return path


def load_bundle(path: str | os.PathLike) -> Bundle:
    path = Path(path)
    meta_file = path / "bundle.json"
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a featx model bundle (no bundle.json): give the folder "
                          f"that `featx fit-head` printed")
    try:
        doc = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {meta_file} ({e}): fit the head again") from e
    if doc.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_file} has bundle format {doc.get('format_version')}, this "
                          f"featx reads {FORMAT_VERSION}: fit the head again")
    try:
        head = load_head(path, doc["head"])
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BundleError(f"cannot read the head in {path} ({type(e).__name__}: {e}): fit the "
                          f"head again") from e
    info = {k: v for k, v in doc.items() if k not in
            ("format_version", "featx_version", "created", "backbone", "classes", "head", "metrics")}
    return Bundle(identity=FeatureIdentity.from_dict(doc["backbone"]), classes=doc["classes"], head=head,
                  model=doc["head"]["model"], metrics=doc.get("metrics", {}), info=info, path=path)


def backbone_for(bundle: Bundle, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """The backbone a bundle's head was fitted on, refusing one whose features would differ."""
    ident = bundle.identity
    # A fine-tuned bundle names its own backbone file, relative to the bundle folder; other
    # bundles name the file their cache was extracted with, as it was given.
    stored = ident.weights_path
    known = next((p for p in ([Path(bundle.path or ".") / stored, Path(stored)] if stored else [])
                  if p.is_file()), None)
    if weights is None and ident.weights_sha256 == RANDOM_INIT:
        weights = "none"
    elif weights is None and known is not None:
        weights = known
    try:
        model = load_backbone(ident.backbone, weights, ident.pool)
    except WeightsUnavailableError as e:
        raise BundleError(f"{e} (the bundle {bundle.path} needs weights with sha256 "
                          f"{ident.weights_sha256})") from e
    now = model.identity()
    key = ident.mismatch(now)
    if key is not None:
        fix = ("pass --weights with the file the bundle was made with" if key == "weights_sha256"
               else "extract the training data again and fit a new head")
        raise BundleError(f"the bundle {bundle.path} was fitted on features with {key}="
                          f"{getattr(ident, key)}, but the backbone loaded now has {key}="
                          f"{getattr(now, key)}: {fix}")
    return model
