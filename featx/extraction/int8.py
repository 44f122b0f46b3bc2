"""int8 features (``dtype`` int8): the base quantized on calibration images from the first
extraction (a seeded sample of its folder), and that same graph for every later run of its cache
and for scoring its bundles, so that a head only ever meets the features it was fitted on."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from ..backbones.extractor import FeatureExtractor
from ..cache.reader import open_cache
from ..data.folders import Dataset
from ..errors import CacheError, ConfigError
from .engine import Engine, reader
from .execution import exported, quantized

log = logging.getLogger(__name__)

# Images the ranges of the activations are taken over: enough that one more changes them little.
CALIBRATION_IMAGES = 300
SEED = 0


def quantized_engine(engine: Engine, model: FeatureExtractor, dataset: Dataset, cache: Path,
                     force: bool = False) -> tuple[Engine, str]:
    """``engine`` (a local one) running the int8 graph of the features in ``cache``, and that
    graph's name: the one its placement names already (a bundle's), the one ``cache`` was
    computed by (unless ``force``), or one quantized now on a seeded sample of ``dataset``."""
    p = engine.placement
    graph = p.quantized or (None if force else _recorded(cache)) or _calibrated(model, dataset)
    return dataclasses.replace(engine, placement=dataclasses.replace(p, quantized=graph)), graph.name


def _recorded(cache: Path) -> Path | None:
    """The int8 graph that computed the features in ``cache``, where it holds any."""
    try:
        name = open_cache(cache, in_memory=False).identity.quantized
    except (CacheError, OSError):  # no cache yet, or one that extract will replace anyway
        return None
    if not name:
        return None
    graph = exported.folder() / name
    if not graph.is_file():
        raise ConfigError(f"{cache} was computed by the int8 graph {name}, which is not in "
                          f"{graph.parent}: pass `force` to quantize the base again and extract "
                          f"every image anew")
    return graph


def _calibrated(model: FeatureExtractor, dataset: Dataset) -> Path:
    """The base quantized on up to ``CALIBRATION_IMAGES`` of ``dataset``'s images, drawn with a
    fixed seed from its train/ folder where it has one, as extraction decodes and crops them;
    made once for those images."""
    # Ranges of pixels, not labels; still, the images a held-out figure is measured on stay out.
    train = [s for s in dataset.samples if s.split == "train"] or dataset.samples
    chosen = np.sort(np.random.default_rng(SEED).choice(len(train), min(len(train), CALIBRATION_IMAGES),
                                                        replace=False))
    files, _ = reader(model, dataset.root, [train[i].path for i in chosen], on_device=False)
    read = [(found, digest) for _, found, digest, _ in (files[i] for i in range(len(files)))
            if found is not None]
    if not read:
        raise ConfigError(f"no image under {dataset.root} could be read to calibrate int8 on")
    key = hashlib.sha256("\n".join(sorted(d for _, d in read)).encode()).hexdigest()
    images = np.stack([t.numpy() for t, _ in read])
    try:
        return quantized.quantize(model, exported.export(model), images, key)
    except exported.Refused as e:
        raise ConfigError(str(e)) from e
