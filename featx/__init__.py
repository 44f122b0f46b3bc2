"""featx: transfer learning on cached features of a frozen pretrained CNN.

    featx.extract(DATA)              -> ExtractResult (HDF5 cache of features)
    featx.fit_head(CACHE, "logistic") -> FitResult (model bundle)
    featx.audit(CACHE)               -> AuditResult (suspected label errors, near-duplicates, leaks)
    featx.finetune(DATA, BUNDLE)     -> FinetuneResult (bundle with a fine-tuned backbone)
    featx.score(FOLDER, BUNDLE)      -> ScoreResult (CSV of predictions)
    featx.export(BUNDLE)             -> ExportResult (one ONNX model: images to probabilities)
    featx.check(DATA)                -> CheckReport (unreadable files, duplicates, leakage)
    featx.classify(FOLDER)           -> ClassifyResult (the backbone's own ImageNet labels)
    featx.info(CACHE or BUNDLE)      -> Info (what it holds)
    featx.report(BUNDLE)             -> ReportResult (one self-contained HTML page)

Every name below is loaded on first use (the Scientific Python SPEC 1 pattern): ``import featx``
and ``featx --help`` import neither torch nor scikit-learn; ``featx.extract`` imports what
extraction needs the first time it is touched.
"""

import importlib
import os

# Torch allocates every large activation anew, and the kernel maps it in 4 KiB page faults: on a
# CPU that is a third of a forward pass. Transparent huge pages (2 MiB) cut those faults ~30-fold,
# and Lite0's forward pass runs 1.6-1.7x faster for it (benchmarks/bench.py, 2-core CPU). Torch
# reads this once, at its first large allocation, so it is set before torch is imported; a value
# the user set is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .version import __version__

# Public name -> the module that defines it.
_API = {
    "extract": "extraction.extract", "ExtractResult": "extraction.update",
    "fit_head": "fitting.fit", "FitResult": "fitting.fit",
    "audit": "auditing.audit", "AuditResult": "auditing.audit",
    "finetune": "finetuning.run", "FinetuneResult": "finetuning.run", "Recipe": "finetuning.recipe",
    "score": "scoring.score", "ScoreResult": "scoring.score",
    "export": "scoring.export", "ExportResult": "scoring.export",
    "check": "data.check", "CheckReport": "data.check",
    "classify": "scoring.classify", "ClassifyResult": "scoring.classify",
    "info": "reporting.info", "Info": "reporting.info",
    "report": "reporting.report", "ReportResult": "reporting.report",
    "run_demo": "demo",
    "Runtime": "runtime", "RayEngine": "runtime",
    "FeatureIdentity": "backbones.identity", "place": "extraction.placement",
    "Placement": "extraction.engine",
    "DEFAULT_BACKBONE": "backbones.registry", "register": "backbones.registry",
    "unregister": "backbones.registry", "get_backbone": "backbones.registry",
    "list_backbones": "backbones.registry",
    "BackboneSpec": "backbones.spec", "Preprocessing": "backbones.preprocessing",
    "FeatureExtractor": "backbones.extractor", "load_backbone": "backbones.extractor",
    "FeatureSpec": "backbones.extractor", "feature_spec": "backbones.extractor",
    "backbone_layers": "backbones.extractor", "timm_backbone": "backbones.timm_zoo",
    "Bundle": "bundle", "load_bundle": "bundle",
    "FeatureCache": "cache.reader", "open_cache": "cache.reader", "write_cache": "cache.writer",
    "scan": "data.folders", "load_rgb": "data.images",
    "HEADS": "heads.registry", "make_head": "heads.registry", "TorchHead": "heads.torch_head",
    "FeatxError": "errors", "BundleError": "errors", "CacheError": "errors", "ConfigError": "errors",
    "DataError": "errors", "UnknownBackboneError": "errors", "WeightsUnavailableError": "errors",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return __all__
