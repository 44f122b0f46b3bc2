"""featx: transfer learning on cached features of a frozen pretrained CNN.

    featx.extract(DATA)              -> ExtractResult (HDF5 cache of features)
    featx.fit_head(CACHE, "logistic") -> FitResult (model bundle)
    featx.finetune(DATA, BUNDLE)     -> FinetuneResult (bundle with a fine-tuned backbone)
    featx.score(FOLDER, BUNDLE)      -> ScoreResult (CSV of predictions)
    featx.check(DATA)                -> CheckReport (unreadable files, duplicates, leakage)
"""

import os

# Torch allocates every large activation anew, and the kernel maps it in 4 KiB page faults: on a
# CPU that is a third of a forward pass. Transparent huge pages (2 MiB) cut those faults ~30-fold,
# and Lite0's forward pass runs 1.6-1.7x faster for it (benchmarks/bench.py, 2-core CPU). Torch
# reads this once, at its first large allocation, so it is set before torch is imported; a value
# the user set is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

from .backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    FeatureExtractor,
    get_backbone,
    list_backbones,
    load_backbone,
    register,
)
from .bundle import Bundle, load_bundle
from .cache import FeatureCache, open_cache
from .checking import CheckReport, check
from .data import load_rgb, scan
from .demo import run_demo
from .errors import (
    BundleError,
    CacheError,
    ConfigError,
    DataError,
    FeatxError,
    UnknownBackboneError,
    WeightsUnavailableError,
)
from .extraction import ExtractResult, extract
from .finetuning import FinetuneResult, finetune
from .heads import HEADS, TorchHead, make_head
from .preprocessing import Preprocessing
from .scoring import ScoreResult, score
from .training import FitResult, fit_head

__all__ = [
    "DEFAULT_BACKBONE", "HEADS", "BackboneSpec", "Bundle", "BundleError", "CacheError",
    "CheckReport", "ConfigError", "DataError", "ExtractResult", "FeatureCache", "FeatureExtractor",
    "FeatxError", "FinetuneResult", "FitResult", "Preprocessing", "ScoreResult", "TorchHead",
    "UnknownBackboneError", "WeightsUnavailableError", "check", "extract", "finetune", "fit_head",
    "get_backbone", "list_backbones",
    "load_backbone", "load_bundle", "load_rgb", "make_head", "open_cache", "register", "run_demo", "scan",
    "score",
]
