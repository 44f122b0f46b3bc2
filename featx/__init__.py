"""featx: transfer learning on cached features of a frozen pretrained CNN.

    featx.extract(DATA)              -> ExtractResult (HDF5 cache of features)
    featx.fit_head(CACHE, "logistic") -> FitResult (model bundle)
    featx.score(FOLDER, BUNDLE)      -> ScoreResult (CSV of predictions)
"""

__version__ = "0.1.0"

from .backbones import (DEFAULT_BACKBONE, BackboneSpec, FeatureExtractor, get_backbone,  # noqa: E402
                        list_backbones, load_backbone)
from .bundle import Bundle, load_bundle  # noqa: E402
from .cache import FeatureCache, open_cache  # noqa: E402
from .data import load_rgb, scan  # noqa: E402
from .demo import run_demo  # noqa: E402
from .errors import (BundleError, CacheError, ConfigError, DataError, FeatxError,  # noqa: E402
                     UnknownBackboneError, WeightsUnavailableError)
from .extraction import ExtractResult, extract  # noqa: E402
from .heads import HEADS, TorchHead, make_head  # noqa: E402
from .preprocessing import Preprocessing  # noqa: E402
from .scoring import ScoreResult, score  # noqa: E402
from .training import FitResult, fit_head  # noqa: E402

__all__ = [
    "DEFAULT_BACKBONE", "HEADS", "BackboneSpec", "Bundle", "BundleError", "CacheError",
    "ConfigError", "DataError", "ExtractResult", "FeatureCache", "FeatureExtractor", "FeatxError",
    "FitResult", "Preprocessing", "ScoreResult", "TorchHead", "UnknownBackboneError",
    "WeightsUnavailableError", "extract", "fit_head", "get_backbone", "list_backbones",
    "load_backbone", "load_bundle", "load_rgb", "make_head", "open_cache", "run_demo", "scan",
    "score",
]
