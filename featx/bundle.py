"""The model bundle: a folder holding everything needed to classify raw images later.

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

from . import __version__
from .errors import BundleError
from .heads import load_head, save_head

FORMAT_VERSION = 1


@dataclass
class Bundle:
    identity: dict              # the backbone identity the head's features came from
    classes: list[str]
    head: BaseEstimator
    model: str                  # the head's name in heads.HEADS
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
                   backbone=self.identity, classes=self.classes,
                   head=dict(model=self.model, **head_meta), metrics=self.metrics, **self.info)
        tmp = path / "bundle.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, default=float))
        os.replace(tmp, path / "bundle.json")
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
    return Bundle(identity=doc["backbone"], classes=doc["classes"], head=head,
                  model=doc["head"]["model"], metrics=doc.get("metrics", {}), info=info, path=path)
