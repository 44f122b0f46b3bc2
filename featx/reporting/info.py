"""``featx info``: what a feature cache or a model bundle holds, read from its attributes and
files without running any model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backbones.identity import RANDOM_INIT, FeatureIdentity
from ..bundle import BUNDLE_FILE, Bundle, load_bundle
from ..cache.format import data_folder
from ..cache.reader import FeatureCache, open_cache
from ..data.folders import SPLITS, UNLABELLED, UNSPLIT
from ..errors import ConfigError
from ..util.files import size_text


@dataclass
class Info:
    path: Path
    kind: str                                   # "cache" or "bundle"
    facts: list[tuple[str, str]]                # (what, value), in the order shown
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> images
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (path, why)
    metrics: dict = field(default_factory=dict)                       # split -> ``Tally`` result
def identity_facts(ident: FeatureIdentity) -> list[tuple[str, str]]:
    p = ident.preprocessing
    weights = ("random (`weights` none)" if ident.weights_sha256 == RANDOM_INIT
               else ident.weights_file or "the backbone's own")
    # Features written by ``write_cache`` from elsewhere record no preprocessing.
    done = (f"resize {p['resize_size']} ({p['interpolation']}), crop {p['crop_size']}, mean "
            f"{tuple(p['mean'])}, std {tuple(p['std'])}" if p else "not recorded")
    return [("backbone", ident.backbone),
            ("weights", f"{weights}, sha256 {ident.weights_sha256[:16]}"),
            ("features", f"{ident.feature_dim} per image, {ident.pool} pooling"
                         + (f" of layers {ident.layers}" if ident.layers else "")),
            ("preprocessing", done)]


# A score cache's rows have no split, and images in no class folder are labelled -1.


def cache_counts(fc: FeatureCache) -> dict[str, dict[str, int]]:
    """Images per class and split, in the order of ``SPLITS``."""
    names = [*fc.classes, UNLABELLED]
    counts: dict[str, dict[str, int]] = {c: {} for c in names}
    for split in [*SPLITS, ""]:
        sel = fc.splits == split
        # -1 wraps round to the last name, UNLABELLED.
        for c, n in zip(names, np.bincount(fc.labels[sel] % len(names), minlength=len(names)), strict=True):
            if n:
                counts[c][split or UNSPLIT] = int(n)
    return {c: n for c, n in counts.items() if n or c != UNLABELLED}


def _cache_info(path: Path) -> Info:
    fc = open_cache(path, in_memory=False)
    a = fc.attrs
    data = data_folder(path, a)
    facts = [("cache", str(path)), ("size on disk", size_text(path.stat().st_size)),
             ("images", f"{len(fc.labels)} in {len(fc.classes)} classes, {len(fc.failed)} skipped"),
             ("classes", ", ".join(fc.classes)),
             *identity_facts(fc.identity),
             ("dtype", f"{a.get('dtype')} ({fc.features.dtype} on disk)"),
             ("made", f"{a.get('execution', '?')} on {a.get('device', '?')}, decoding on "
                      f"{a.get('decode', '?')}, {float(a.get('seconds', 0)):.1f} s"),
             ("data", f"{a.get('data', '?')} ({data if data else 'not found where it was'})"),
             ("versions", f"featx {a.get('featx_version', '?')}, torch {a.get('torch_version', '?')}, "
                          f"torchvision {a.get('torchvision_version', '?')}")]
    return Info(path, "cache", facts, cache_counts(fc), list(fc.failed))


def _head_numbers(bundle: Bundle) -> int:
    """How many numbers the head learned (the recipes' trainable parameters of a frozen base)."""
    head = bundle.head
    module = getattr(head, "module_", None)
    if module is not None:
        return sum(p.numel() for p in module.parameters())
    last = head[-1] if hasattr(head, "steps") else head
    found = [getattr(last, k) for k in ("coef_", "intercept_") if hasattr(last, k)]
    for clf in getattr(last, "calibrated_classifiers_", []):
        found += [clf.estimator.coef_, clf.estimator.intercept_]
    return int(sum(np.size(x) for x in found))


def _backbone_parameters(name: str) -> int:
    from ..backbones.registry import get_backbone

    spec = get_backbone(name)
    return sum(p.numel() for p in spec.tap(spec.build()).parameters())


def bundle_info(b: Bundle) -> Info:
    """What a loaded bundle holds (``info`` for a path)."""
    i, path = b.info, b.path
    made = json.loads((path / BUNDLE_FILE).read_text())  # checked by load_bundle
    files = ", ".join(f"{n} {size_text(e['size'])}" for n, e in b.files.items())
    params = ", ".join(f"{k}={v}" for k, v in (i.get("params") or {}).items()) or "defaults"
    if "trainable" in i:  # fine-tuned: the counts its run measured
        trainable, frozen = i.get("trainable", 0), i.get("frozen", 0)
    else:
        trainable, frozen = _head_numbers(b), _backbone_parameters(b.identity.backbone)
    facts = [("bundle", str(path)), ("files", files),
             ("made", f"featx {made.get('featx_version', '?')}, {made.get('created', '?')}"),
             ("head", f"{b.model} ({params}), fitted on {i.get('fitted_on', 'train')}"),
             ("parameters", f"{trainable:,} trainable, {frozen:,} frozen"),
             ("classes", ", ".join(b.classes)), *identity_facts(b.identity),
             ("precision", b.dtype + (f", the graph {b.identity.quantized}" if b.identity.quantized else ""))]
    if "search" in i:
        chosen = ", ".join(f"{k}={v:g}" for k, v in i["search"]["chosen"].items())
        facts.append(("search", f"{len(i['search']['trials'])} settings tried on val, chosen {chosen}"))
    if "settings" in i:
        s = i["settings"]
        facts.append(("fine-tuned", f"from {i.get('finetuned_from')}: {s.get('unfreeze')} unfrozen, "
                                    f"best epoch {i.get('best_epoch')} of {s.get('epochs')}, lr "
                                    f"{s.get('lr')}, augment {', '.join(s.get('augment', [])) or 'none'}"))
        if "verdict" in i:
            v = i["verdict"]
            facts.append(("verdict", f"{'fine-tuned model' if v['kept'] == 'finetuned' else 'head'} kept: "
                                     f"val {v['before']:.4f} -> {v['after']:.4f}, gain "
                                     f"{100 * v['gain']:+.2f} points (95% CI {100 * v['low']:+.2f} to "
                                     f"{100 * v['high']:+.2f}) on {v['n']} images"))
    for key in ("cache", "data"):
        if i.get(key):
            facts.append((key, str(i[key]) + ("" if Path(i[key]).exists() else " (not found)")))
    if i.get("timings"):
        facts.append(("timings", ", ".join(f"{k} {v:.1f} s" for k, v in i["timings"].items())))
    return Info(path, "bundle", facts, metrics=b.metrics)


def info(path: str | os.PathLike) -> Info:
    """What the cache (an .h5 file) or bundle (a folder) at ``path`` holds."""
    path = Path(path)
    if (path / BUNDLE_FILE).is_file():
        return bundle_info(load_bundle(path))
    if path.is_file():
        return _cache_info(path)
    raise ConfigError(f"{path} is neither a feature cache (.h5) nor a model bundle (a folder with "
                      f"{BUNDLE_FILE}): give what `featx extract` or `featx fit-head` printed")

