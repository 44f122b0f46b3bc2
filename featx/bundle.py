"""The model bundle: a folder holding everything needed to classify raw images later, and the
backbone it needs, refused if its features would differ.

    bundle.json           backbone identity (name, weights sha256, preprocessing, pooling), class
                          names, the head's kind, metrics, provenance, and every other file of the
                          folder with its size and sha256
    head.safetensors      the head: its parameters and the arrays it learned (``heads.storage``)
    backbone.safetensors  a fine-tuned bundle's backbone
    *.png, history.*      pictures and the fine-tune's history, beside it

A bundle is what people hand to each other, so loading one reads data and never runs code:
JSON and safetensors only, every file checked against the size and sha256 bundle.json lists, the
head rebuilt by featx from its arrays. A bundle is written whole (``files.folder_write``): a
crash or a full disk leaves the old one, or none, never half of each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator

from .backbones.identity import DTYPES, IDENTITY, RANDOM_INIT, FeatureIdentity
from .cache.lock import locked
from .data.augmentation import AUGMENTATIONS
from .errors import BundleError, WeightsUnavailableError
from .evaluation import METRICS
from .heads.registry import HEADS, class_proba
from .heads.storage import load_head, save_head
from .util.files import durable_write, folder_write, sha256_file, size_text
from .util.schema import Int, Invalid, Items, Nullable, Num, Record, Text, check, fits, load_json, shown
from .version import __version__

if TYPE_CHECKING:
    from .backbones.extractor import FeatureExtractor

FORMAT_VERSION = 2  # 2: every file listed and checked, the head as safetensors; 1: head.joblib
BUNDLE_FILE = "bundle.json"
# The images a head was fitted on (``Bundle.fitted_images``): each one's ``image_key``, sorted, as
# big-endian uint64s, 8 bytes an image, so that scoring can say which images were not held out
# without the cache.
FITTED_FILE = "fitted_images.u64"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Provenance entries of ``info`` that are paths: kept relative to the bundle folder in the file,
# so that a bundle handed on names no one's home folder, and absolute in memory.
_PATHS = ("cache", "finetuned_from", "data")
_KNOWN = ("format_version", "featx_version", "created", "backbone", "dtype", "classes", "head",
          "metrics", "files")


# What bundle.json may hold, every field any featx reads (``load_bundle``, ``info``, ``report``,
# ``finetune``): a bundle from elsewhere is refused in one line naming the first field that is not
# as featx writes it, rather than failing wherever it is first used. Figures only shown may be
# NaN (a diverged trial's loss); what is computed with may not.
_SHARE, _SHOWN, _COUNT, _SEED = Num(0, 1, finite=False), Num(finite=False), Int(), Int(0, 2**63 - 1)
_MODEL = Text(choices=tuple(HEADS))
_SETTINGS = Record({"unfreeze": Text(), "epochs": Int(1), "batch_size": Int(1), "lr": Num(0),
                    "augment": Items(Text(choices=AUGMENTATIONS)), "seed": _SEED})
_VERDICT = Record({"kept": Text(choices=("head", "finetuned")), "n": _COUNT, "epoch": _COUNT,
                   **{k: _SHOWN for k in ("before", "after", "gain", "low", "high", "alpha")}},
                  required=("kept", "n", "before", "after", "gain", "low", "high"))
_TRIAL = Record({"params": Record(other=Num()), "val_accuracy": _SHARE, "val_loss": _SHOWN,
                 "seconds": _SHOWN}, required=("params", "val_accuracy", "val_loss", "seconds"))
_SCHEMA = Record({
    "format_version": Int(), "featx_version": Text(), "created": Text(), "backbone": IDENTITY,
    "dtype": Text(choices=DTYPES), "classes": Items(Text(1), most=1 << 20),
    "head": Record({"model": _MODEL, "file": Text(1, name=True)},
                   required=("model", "file")),
    "metrics": Record(other=METRICS),
    "files": Record(other=Record({"size": _COUNT, "sha256": Text()}, required=("size", "sha256"))),
    **{k: Text() for k in (*_PATHS, "split_sha256", "fitted_on", "history")},
    "params": Record(), "val_split": Nullable(Num(0, 1)), "seed": _SEED,
    "timings": Record(other=_SHOWN), "trainable": _COUNT, "frozen": _COUNT, "best_epoch": _COUNT,
    "search": Record({"trials": Items(_TRIAL), "chosen": Record(other=Num())}, required=("trials", "chosen")),
    "settings": _SETTINGS, "verdict": _VERDICT, "head_val_accuracy": _SHARE, "finetuned_test": METRICS,
    "mixing": Items(Record({"alpha": _SHOWN, "val_accuracy": _SHARE, "val_loss": _SHOWN}))})
MAX_DOC = 256 << 20  # bytes of bundle.json: a thousand classes' confusion matrices take tens of MB


def _check_doc(doc: dict) -> None:
    """``doc`` is as featx writes it (``_SCHEMA``), its parts agreeing with each other; raises
    ``Invalid`` naming the first field that is not."""
    check(doc, _SCHEMA)
    if len(set(doc["classes"])) < len(doc["classes"]):
        raise Invalid("classes", "names a class twice")
    chosen = doc.get("search", {}).get("chosen", {})
    for i, trial in enumerate(doc.get("search", {}).get("trials", [])):
        if set(trial["params"]) != set(chosen):
            raise Invalid(f"search.trials[{i}].params", "has other parameters than search.chosen")


@dataclass
class Bundle:
    identity: FeatureIdentity   # what the features the head was fitted on are
    classes: list[str]
    head: BaseEstimator
    model: str                  # the head's name in heads.registry.HEADS
    # Their precision (``identity.DTYPES``), which scoring computes again: a head meets features
    # of no other. Bundles of an earlier featx were all fitted on float32.
    dtype: str = "float32"
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    path: Path | None = None
    files: dict = field(default_factory=dict)  # name -> {size, sha256}: what bundle.json lists

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities with one column per entry of ``classes``, in that order."""
        return class_proba(self.head, features, len(self.classes))

    def fitted_images(self) -> np.ndarray | None:
        """The ``image_key``s of the images the head was fitted on, sorted; None where the bundle
        does not record them (one of an earlier featx, or of features from elsewhere)."""
        if self.path is None or FITTED_FILE not in self.files:
            return None
        data = (self.path / FITTED_FILE).read_bytes()
        if len(data) % 8:
            raise BundleError(f"{self.path / FITTED_FILE} is {len(data)} bytes, not 8 an image: "
                              f"fit the head again")
        return np.frombuffer(data, ">u8").astype(np.uint64)

    def own_files(self) -> list[Path]:
        """bundle.json and every file it lists: what no output of a run that reads the bundle
        may replace."""
        return [] if self.path is None else [self.path / BUNDLE_FILE, *(self.path / n for n in self.files)]

    def save(self, path: str | os.PathLike, extra: Callable[[Path], object] | None = None) -> Path:
        """Write the bundle whole to the folder ``path``, replacing a bundle there; another
        process writing one there meanwhile is refused in one line.

        ``extra(folder)`` first writes further files into the new folder (pictures, a fine-tuned
        backbone); it may still change this bundle, as bundle.json is written last.
        """
        path = Path(path)
        with writing(path):
            check_out(path)
            self._write(path, extra)
        self.path = path
        return path

    def _write(self, path: Path, extra: Callable[[Path], object] | None) -> None:
        try:
            with folder_write(path) as folder:
                if extra is not None:
                    extra(folder)
                head_file = save_head(self.head, self.model, folder)
                self.files = {f.name: dict(size=f.stat().st_size, sha256=sha256_file(f))
                              for f in sorted(folder.iterdir())}
                doc = dict(format_version=FORMAT_VERSION, featx_version=__version__,
                           created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           backbone=self.identity.to_dict(), dtype=self.dtype, classes=self.classes,
                           head=dict(model=self.model, file=head_file), metrics=self.metrics,
                           **_relative(self.info, path), files=self.files)
                with durable_write(folder / BUNDLE_FILE) as tmp:
                    tmp.write_text(json.dumps(doc, indent=2, default=float))
        except OSError as e:
            raise BundleError(f"cannot write the bundle {path} ({e.strerror or e}): make room, or "
                              f"choose another `out`; {path} is as it was") from e


# The bundle folders this process is writing (``writing``), by absolute path.
_WRITING: set[Path] = set()


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Hold the bundle folder ``path`` for the block: another process writing a bundle there
    meanwhile is refused in one line (``cache.lock``). Held already (a fine-tune, for its whole
    run), ``Bundle.save`` writes there without asking again."""
    held = path.absolute()
    if held in _WRITING:
        yield
        return
    with locked(path, BundleError):
        _WRITING.add(held)
        try:
            yield
        finally:
            _WRITING.discard(held)


def check_out(path: Path) -> None:
    """Refuse, before any work, a bundle folder that would replace something not a bundle:
    a file, or a folder without bundle.json that is not empty."""
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path} is a file, and a bundle is a folder: choose another `out`")
    if path.is_dir() and not (path / BUNDLE_FILE).is_file() and any(path.iterdir()):
        raise BundleError(f"{path} is a folder that is not a featx bundle, and writing one there "
                          f"would replace it: choose another `out`")


def _relative(info: dict, folder: Path) -> dict:
    return {k: os.path.relpath(v, folder.absolute()) if k in _PATHS and v else v
            for k, v in info.items()}


def _absolute(info: dict, folder: Path) -> dict:
    return {k: os.path.normpath(folder.absolute() / v) if k in _PATHS and isinstance(v, str) and v
            else v for k, v in info.items()}


def _plain_name(name) -> bool:
    return isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")


def _check_files(path: Path, files) -> None:
    """Every file bundle.json lists is there, of its size and sha256."""
    if not isinstance(files, dict) or not all(_plain_name(n) and isinstance(e, dict)
                                              for n, e in files.items()):
        raise BundleError(f"{path / BUNDLE_FILE}: its list of files is damaged: get the bundle "
                          f"again, or fit the head again")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            problem = "missing, though bundle.json lists it"
        elif file.stat().st_size != entry.get("size"):
            problem = f"{file.stat().st_size} bytes, not the {entry.get('size')} bundle.json lists"
        elif sha256_file(file) != entry.get("sha256"):
            problem = "its sha256 is not the one bundle.json lists"
        else:
            continue
        raise BundleError(f"{file}: {problem}; the bundle was changed or damaged since it was "
                          f"written: get it again, or fit the head again")


def _read_doc(path: Path) -> dict:
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise BundleError(f"{path} is not a featx model bundle (no {BUNDLE_FILE}): give the folder "
                          f"that `featx fit-head` printed")
    try:
        if meta_file.stat().st_size > MAX_DOC:
            raise Invalid("", f"is {size_text(meta_file.stat().st_size)}, more than a bundle.json "
                              f"takes ({size_text(MAX_DOC)})")
        doc = load_json(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {meta_file} ({e}): fit the head again") from e
    if not isinstance(doc, dict):
        raise BundleError(f"{meta_file} is not a featx bundle.json (not a JSON object): fit the "
                          f"head again")
    version = doc.get("format_version")
    if version == 1 or (version is None and (path / "head.joblib").exists()):
        # Shown in the command to run, so only as a name featx would have written.
        cache = doc["cache"] if fits(doc.get("cache"), Text(1, 4096)) else "CACHE.h5"
        head = doc.get("head")
        model = head["model"] if isinstance(head, dict) and fits(head.get("model"), _MODEL) else "logistic"
        raise BundleError(
            f"{path} is a bundle of an older featx whose head is a pickle, which can run any code "
            f"when loaded, so featx no longer reads it: fit the head again (seconds, from the "
            f"cached features): featx fit-head {cache} --model {model} --out {path}")
    if version != FORMAT_VERSION:
        raise BundleError(f"{meta_file} has bundle format {shown(version)}, this featx reads "
                          f"{FORMAT_VERSION}: fit the head again")
    missing = [k for k in ("backbone", "classes", "head", "files") if k not in doc]
    if missing:
        raise BundleError(f"{meta_file} has no {', '.join(missing)}: it is damaged: fit the head "
                          f"again")
    try:
        _check_doc(doc)
    except Invalid as e:
        raise BundleError(f"{meta_file} is damaged ({e}): fit the head again") from e
    return doc


def load_bundle(path: str | os.PathLike) -> Bundle:
    """The bundle in folder ``path``; every file is checked, and a damaged, edited or older
    (pickled) one is refused with one line naming it."""
    path = Path(path)
    doc = _read_doc(path)
    meta_file = path / BUNDLE_FILE
    _check_files(path, doc["files"])
    try:
        identity = FeatureIdentity.from_dict(doc["backbone"])
        dtype = doc.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is none of {', '.join(DTYPES)}")
        classes, model, head_file = list(doc["classes"]), doc["head"]["model"], doc["head"]["file"]
        if not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes is not a list of names")
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{meta_file} is damaged ({type(e).__name__}: {e}): fit the head "
                          f"again") from e
    if head_file not in doc["files"]:
        raise BundleError(f"{meta_file} names a head file {head_file!r} it does not list: fit "
                          f"the head again")
    try:
        head = load_head(path / head_file, model)
        _check_head(head, identity, classes)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise BundleError(f"cannot use the head in {path / head_file} ({type(e).__name__}: {e}): "
                          f"fit the head again") from e
    info = _absolute({k: v for k, v in doc.items() if k not in _KNOWN}, path)
    return Bundle(identity=identity, classes=classes, head=head, model=model, dtype=dtype,
                  metrics=doc.get("metrics", {}), info=info, path=path, files=doc["files"])


def image_keys(digests: Iterable[str]) -> np.ndarray:
    """Each image's sha256 (hex) as its first 8 bytes, a uint64: a key that tells one image from
    a million others (two of n images share one by chance with odds of about n²/2⁶⁵); a digest
    that is no sha256 (``write_cache`` records none) gives 0, which no head records."""
    return np.array([int(d[:16], 16) if _SHA256.fullmatch(d) else 0 for d in digests], np.uint64)


def write_fitted_images(folder: Path, keys: np.ndarray) -> None:
    keys = np.unique(keys[keys != 0])
    if len(keys):
        (folder / FITTED_FILE).write_bytes(keys.astype(">u8").tobytes())


def _check_head(head: BaseEstimator, identity: FeatureIdentity, classes: list[str]) -> None:
    """The head takes the identity's features and answers with the bundle's classes."""
    known = np.asarray(head.classes_)
    if known.dtype.kind not in "iu" or known.min() < 0 or known.max() >= len(classes):
        raise ValueError(f"its classes {known.tolist()} are not numbers of the {len(classes)} "
                         f"classes in bundle.json")
    proba = head.predict_proba(np.zeros((1, identity.feature_dim), np.float32))
    if proba.shape != (1, len(known)):
        raise ValueError(f"it gives {proba.shape[1]} probabilities for {len(known)} classes")


def backbone_for(bundle: Bundle, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """The backbone a bundle's head was fitted on, refusing one whose features would differ."""
    from .backbones.extractor import load_backbone  # torch: paid by those who run a backbone

    ident = bundle.identity
    # A fine-tuned bundle holds its backbone, listed and checked like its other files; the others
    # need the weights their cache was extracted with: the backbone's own, or ``weights``.
    if weights is None and ident.weights_sha256 == RANDOM_INIT:
        weights = "none"
    elif weights is None and bundle.path is not None and ident.weights_file in bundle.files:
        weights = bundle.path / ident.weights_file
    try:
        model = load_backbone(ident.backbone, weights, ident.pool, ident.layer_names)
    except WeightsUnavailableError as e:
        raise BundleError(f"{e} (the bundle {bundle.path} needs weights with sha256 "
                          f"{ident.weights_sha256})") from e
    # The int8 graph is not the backbone's: scoring finds it (``extraction.int8``).
    now = dataclasses.replace(model.identity(), quantized=ident.quantized)
    key = ident.mismatch(now)
    if key is not None:
        fix = (f"pass `weights` with the file the bundle was made with "
               f"({ident.weights_file or 'its name is not recorded'})" if key == "weights_sha256"
               else "extract the training data again and fit a new head")
        raise BundleError(f"the bundle {bundle.path} was fitted on features with {key}="
                          f"{getattr(ident, key)}, but the backbone loaded now has {key}="
                          f"{getattr(now, key)}: {fix}")
    return model
