"""Stage one: run the frozen backbone over an image folder once and keep its features in HDF5."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..backbones.extractor import feature_spec, load_backbone
from ..backbones.registry import DEFAULT_BACKBONE
from ..cache.format import default_path
from ..data.manifest import Manifest, labelled
from ..errors import ConfigError
from ..runtime import RayEngine, Runtime
from .placement import place
from .update import ExtractResult, update_cache

log = logging.getLogger(__name__)


def extract(data: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
            weights: str | os.PathLike | None = None, pool: str = "avg",
            out: str | os.PathLike | None = None, dtype: str | None = None, force: bool = False,
            runtime: Runtime | None = None, layers: tuple[str, ...] = (),
            engine: str | RayEngine = "local",
            labels: str | os.PathLike | Manifest | None = None) -> ExtractResult:
    """Extract features of every image under ``data`` into one HDF5 cache, and return where.

    ``weights``: None for the backbone's default weights, a state-dict path, or "none" (random,
    seeded). ``out`` is a file path, or a folder for the default name (default: ``cache/``).
    Features already in that file, or kept by an interrupted run, are reused for every file
    unchanged since; only new and changed images are extracted, unless ``force``. ``dtype``: the
    features' precision (``identity.DTYPES``; None: the device's default, float32 on a CPU).
    ``runtime``: device, batch size, workers, execution and decoding (``Runtime``'s defaults
    when None). ``layers``: module names inside the base (``backbone_layers``) whose
    outputs, each pooled by ``pool``, are the features, one after the other. ``engine``: local,
    or ray (or a ``RayEngine`` with its settings) for a pool of actors on a Ray cluster, which
    writes the same cache. ``labels``: a manifest (CSV or JSONL, ``Manifest.parse``) naming
    each image's path, label and split, instead of class subfolders; labels and splits are not
    part of what the features are, so editing them updates the cache without extracting again.
    """
    # Settings are checked before a possibly long scan of the data, so a typo fails at once.
    features = feature_spec(backbone, pool, layers)
    runs = place(runtime, engine, dtype)
    dataset = labelled(data, labels)
    model = load_backbone(features, weights)
    path = Path(out) if out is not None and Path(out).suffix in (".h5", ".hdf5") else \
        default_path(dataset.root, model.identity(), runs.placement.dtype, out or "cache")
    if path.is_dir():
        raise ConfigError(f"`out` {path} is a folder: give a .h5 file's path, or a folder whose "
                          f"name does not end in .h5")
    log.info("%s: %d images, %d classes, splits %s", dataset.root, len(dataset.samples),
             len(dataset.classes), dataset.split_counts())
    return update_cache(path, dataset, model, runs, force, desc=f"extract {features.backbone.name}")
