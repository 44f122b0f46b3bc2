"""Stage two: fit a head on a feature cache, evaluate it on each split, and write a model bundle.

The head's settings are searched on validation first (``search``) where that costs seconds: for
the logistic head at any size held in memory, as its settings are trained together (``joint``),
for the others on caches of up to ``AUTO_SEARCH_VALUES`` training values; the chosen one is
fitted again on train and validation together. A cache whose features fit the memory budget is read whole; a
larger one is streamed from disk a block of rows at a time, to the heads that can learn that way
(the torch heads, by ``partial_fit``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle, check_out, image_keys, write_fitted_images, writing
from ..cache.format import data_folder
from ..cache.reader import DiskFeatures, FeatureCache, digests, open_cache
from ..errors import ConfigError, DataError, FeatxError, first_line
from ..evaluation import PREDICTIONS_FILE, split_digest, split_indices, write_predictions
from ..heads.registry import DEFAULT_HEAD, MIN_CLASS_IMAGES, TORCH_HEADS, make_head
from ..reporting.painter import Drawing, Picture
from ..reporting.tensorboard import Board
from ..util.files import size_text
from . import joint
from .options import AUTO_SEARCH_VALUES, MAX_MEMORY, SEED, STREAM_EPOCHS, VAL_SPLIT
from .search import COST, SearchResult, probe
from .streamed_search import fit_streamed_logistic, search_streamed
from .streaming import batch_rows, evaluate, fit_streamed

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    bundle: Path
    metrics: dict        # split -> metrics (``evaluation.Tally``); "train+val" after a search
    seconds: float
    plots: list[Path]    # the confusion matrix first
    search: SearchResult | None = None
def _train_rows(fc: FeatureCache, parts: dict[str, np.ndarray], model: str) -> np.ndarray:
    """The training rows, refused unless every class has enough for head ``model``."""
    train = parts.get("train", np.array([], int))
    present = np.unique(fc.labels[train])
    if len(present) < 2:
        raise DataError(f"{fc.path}: the training data has {len(present)} class(es); a classifier "
                        f"needs at least two class subfolders with images")
    missing = sorted(set(range(len(fc.classes))) - set(present.tolist()))
    if missing:
        raise DataError(f"{fc.path}: no training images for class(es) "
                        f"{', '.join(fc.classes[i] for i in missing)}: add some to train/")
    need = MIN_CLASS_IMAGES.get(model, 1)
    few = np.flatnonzero(np.bincount(fc.labels[train], minlength=len(fc.classes)) < need)
    if len(few):
        raise DataError(f"{fc.path}: the {model} head needs {need} training images of each class, "
                        f"and {', '.join(fc.classes[i] for i in few[:5])}"
                        f"{f' and {len(few) - 5} more' if len(few) > 5 else ''} have fewer: use "
                        f"`model` logistic, or add images")
    return train


def _searching(wanted: bool | None, model: str, params: dict, fc: FeatureCache,
               parts: dict[str, np.ndarray], max_memory: int) -> bool:
    """Whether to search: as asked, else where it costs seconds; never without validation."""
    if wanted is False:
        return False
    if "val" not in parts:
        if wanted:
            raise ConfigError(f"{fc.path}: `search` measures each setting on validation images, "
                              f"and none are held out (`val_split` 0, or a single image of each "
                              f"class): leave out `search`, or hold some out")
        return False
    # The logistic head's settings are trained together, for about the cost of one fit: at any size,
    # streamed from disk where the features are larger than memory.
    together = model == "logistic" and joint.solvable(params)
    if fc.features.nbytes > max_memory and not together:
        if wanted:
            raise ConfigError(f"{fc.path}: `search` needs the features in memory, and they take "
                              f"{size_text(fc.features.nbytes)}, more than `max_memory`: raise it")
        return False
    values = len(parts["train"]) * fc.features.shape[1] * COST.get(model, 1)
    if wanted is None and values > AUTO_SEARCH_VALUES and not together:
        log.info("%s: %d training images: fitting the head's defaults without a search (`search` "
                 "to search, which fits it about 10 times)", fc.path, len(parts["train"]))
        return False
    return True


def _fit(head, model: str, fc: FeatureCache, features: np.ndarray | DiskFeatures, train: np.ndarray,
         params: dict, max_memory: int, eval_rows: np.ndarray | None = None,
         found: SearchResult | None = None) -> None:
    """Fit ``head`` on the rows ``train`` of ``features``, in memory or streamed from disk (a
    torch head in memory is measured on ``eval_rows`` after every epoch; a logistic head starts
    from the search's solution where there was one)."""
    if isinstance(features, np.ndarray):
        if model == "logistic" and joint.solvable(params):
            joint.fit_head(head, features[train], fc.labels[train], *((found.solution, found.basis)
                                                                       if found else ()))
        elif model in TORCH_HEADS and eval_rows is not None:
            head.fit(features[train], fc.labels[train], eval_set=(features[eval_rows], fc.labels[eval_rows]))
        else:
            head.fit(features[train], fc.labels[train])
    elif model in TORCH_HEADS or (model == "logistic" and joint.solvable(params)):
        size = batch_rows(features, max_memory)
        log.info("%s: features of %s, more than the %s memory budget: streaming them in batches "
                 "of %d rows", fc.path, size_text(features.nbytes), size_text(max_memory), size)
        if model == "logistic":
            fit_streamed_logistic(head, features, fc.labels, train, len(fc.classes), size,
                                  STREAM_EPOCHS, SEED)
        else:
            if "epochs" not in params:
                head.set_params(epochs=STREAM_EPOCHS)
            fit_streamed(head, features, fc.labels, train, size)
    else:
        raise ConfigError(
            f"{fc.path}: its features take {size_text(features.nbytes)} ({len(features):,} x "
            f"{features.shape[1]:,} {features.dtype}), more than the {size_text(max_memory)} memory "
            f"budget, and the {model} head needs them all in memory: use `model` logistic, linear "
            f"or mlp, which stream them from disk, or raise `max_memory`")


def fit_head(cache: str | os.PathLike, model: str = DEFAULT_HEAD, params: dict | None = None,
             val_split: float = VAL_SPLIT, seed: int = SEED, out: str | os.PathLike | None = None,
             max_memory: int = MAX_MEMORY, search: bool | None = None,
             tensorboard: str | os.PathLike | None = None) -> FitResult:
    """Fit head ``model`` on the cache's train split and write a bundle (default: beside the cache).

    Validation uses the cache's ``val`` split, else a seeded stratified ``val_split`` of train;
    the ``test`` split, when present, is only evaluated. ``search``: try the head's settings
    (``search.GRIDS``, besides those ``params`` fix) on validation, keep the best, and fit it again
    on train and validation together; None: where that costs seconds (logistic: at any size).
    Features larger than ``max_memory`` bytes are streamed from disk: the linear and mlp heads
    learn from them a shuffled batch of about an eighth of ``max_memory`` at a time, for
    ``STREAM_EPOCHS`` epochs unless ``params`` say; the other heads need them all in memory and
    refuse. Evaluation goes
    by the same batches. ``tensorboard``: a folder for a torch head's curves and confusion matrix.
    """
    start = time.perf_counter()
    params = params or {}
    fc = open_cache(cache, in_memory=False)
    path = Path(out) if out else Path(fc.path).with_suffix(f".{model}")
    check_out(path)
    with writing(path):  # held from the start: a second fit-head to this bundle meanwhile is refused
        return _fitted(fc, path, model, params, val_split, seed, max_memory, search, tensorboard, start)


def _fitted(fc: FeatureCache, path: Path, model: str, params: dict, val_split: float, seed: int,
            max_memory: int, search: bool | None, tensorboard: str | os.PathLike | None,
            start: float) -> FitResult:
    """``fit_head``'s work, with the bundle folder ``path`` held."""
    board = _board(fc, model, params, tensorboard)
    parts = split_indices(fc.splits, fc.labels, val_split, seed)
    train = _train_rows(fc, parts, model)
    found, timings = None, {}
    # Read once, where they fit the budget: the search, the fit and the evaluation share them.
    features = fc.features.read() if fc.features.nbytes <= max_memory else fc.features
    size = batch_rows(fc.features, max_memory)
    try:  # scikit-learn checks most parameters only as it fits, and some (n_neighbors) as it predicts
        if _searching(search, model, params, fc, parts, max_memory):
            found = _search(model, params, fc, features, train, parts["val"], size, seed, timings)
        # After a search, the pictures are the search's: drawn beside the fit on train+val.
        drawing = (Drawing(_pictures(fc, model, {"val": found.best.metrics}, found, found.best.history))
                   if found and found.fitted is None else None)
        chosen = {**params, **(found.best.params if found else {})}
        head = found.fitted if found and found.fitted else make_head(model, **chosen)
        fitted = _fitted_rows(parts, found is not None and found.fitted is None)
        bundle = Bundle(identity=fc.identity, classes=fc.classes, head=head, model=model,
                        dtype=fc.attrs.get("dtype", "float32"),
                        info=_provenance(fc, parts, chosen, val_split, seed, found, timings))
        if not (found and found.fitted):
            t0 = time.perf_counter()
            with drawing.beside() if drawing else contextlib.nullcontext():
                _fit(head, model, fc, features, fitted.get("train+val", fitted.get("train")), params,
                     max_memory, None if found else parts.get("val"), found)
            timings["fit"] = time.perf_counter() - t0
        bundle.metrics, predictions = evaluate(bundle, features, fc.labels, fitted, size, fc.paths)
    except FeatxError:
        raise
    except (ValueError, TypeError) as e:
        given = " ".join(f"-p {k}={v}" for k, v in params.items()) or "its default parameters"
        raise ConfigError(f"the {model} head cannot be fitted with {given} ({first_line(e)}): "
                          f"change them") from e
    if "train+val" in fitted:  # validation as the chosen setting measured it, fitted on train alone
        bundle.metrics = {"train+val": bundle.metrics["train+val"], "val": found.best.metrics,
                          **{k: v for k, v in bundle.metrics.items() if k == "test"}}
        predictions = {"val": found.predictions, **predictions}
    history = found.best.history if found else getattr(head, "history_", None)
    drawing = drawing or Drawing(_pictures(fc, model, bundle.metrics, found, history))
    plots: list[str] = []
    rows = fitted.get("train+val", fitted.get("train"))
    bundle.save(path, lambda folder: plots.extend(_files(folder, fc, bundle, predictions, drawing, rows)))
    if board is not None:
        board.fitted(history or [], path / plots[0])
    return FitResult(path, bundle.metrics, time.perf_counter() - start, [path / p for p in plots], found)


def _files(folder: Path, fc: FeatureCache, bundle: Bundle, predictions: dict, drawing: Drawing,
           rows: np.ndarray) -> list[str]:
    """The bundle's files besides its head: pictures and held-out predictions, which images
    (``rows``) the head was fitted on, and for int8 features the graph that computed them;
    returns the pictures' names."""
    write_fitted_images(folder, image_keys(digests(fc.path))[rows])
    _copy_graph(fc, folder)
    if predictions:
        write_predictions(folder / PREDICTIONS_FILE, predictions, bundle.classes)
    return drawing.into(folder)


def _copy_graph(fc: FeatureCache, folder: Path) -> None:
    """Into the bundle, the int8 graph its head's features came from, so that it scores with
    that graph on any machine; said in one line where this machine no longer has it."""
    name = fc.identity.quantized
    if not name:
        return
    from ..extraction.execution.exported import folder as exports  # torch: paid for int8 alone

    try:
        shutil.copyfile(exports() / name, folder / name)
    except FileNotFoundError:
        log.warning("the int8 graph %s that computed %s is not in %s: the bundle scores only where "
                    "it is", name, fc.path, exports())


def _search(model: str, params: dict, fc: FeatureCache, features: np.ndarray | DiskFeatures,
            train: np.ndarray, val: np.ndarray, size: int, seed: int, timings: dict) -> SearchResult | None:
    """The search of the head's settings: in memory, or the logistic head's on features streamed
    from disk (``streamed_search``)."""
    t0 = time.perf_counter()
    if isinstance(features, np.ndarray):
        found = probe(model, params, features, fc.labels, train, val, fc.classes, fc.paths)
    else:
        log.info("%s: features of %s, more than the memory budget: the search streams them in "
                 "batches of %d rows", fc.path, size_text(features.nbytes), size)
        found = search_streamed(features, fc.labels, train, val, fc.classes, fc.paths, size,
                                STREAM_EPOCHS, seed, params)
    timings["search"] = time.perf_counter() - t0
    return found


def _board(fc: FeatureCache, model: str, params: dict, tensorboard: str | os.PathLike | None
           ) -> Board | None:
    """Where a torch head's curves are logged, if asked; a misspelt parameter, logs that cannot
    be written, or a cache without features fail here, before any work."""
    make_head(model, **params)  # a misspelt parameter fails here
    if model not in TORCH_HEADS and tensorboard is not None:
        raise ConfigError(f"`tensorboard` logs the epochs of the linear and mlp heads (and of "
                          f"fine-tuning); a {model} head has none: leave it out")
    if not len(fc.labels):
        raise DataError(f"{fc.path} holds no features: all {len(fc.failed)} of its images were "
                        f"skipped as unreadable (`featx check DATA` lists why)")
    return Board(tensorboard) if tensorboard is not None else None


def _fitted_rows(parts: dict[str, np.ndarray], searched: bool) -> dict[str, np.ndarray]:
    """The rows each figure is measured on: the splits, or after a search, where the chosen
    setting learns from validation too, train+val in place of train and val."""
    if not searched:
        return dict(parts)
    return {"train+val": np.sort(np.concatenate([parts["train"], parts["val"]])),
            **{k: v for k, v in parts.items() if k not in ("train", "val")}}


def _provenance(fc: FeatureCache, parts: dict[str, np.ndarray], chosen: dict, val_split: float,
                seed: int, found: SearchResult | None, timings: dict) -> dict:
    """What a bundle records of how its head was fitted: the cache and the split it was fitted
    and validated on (so fine-tuning can find the same images), its parameters, and the search."""
    data = data_folder(fc.path, fc.attrs)
    return dict(
        cache=str(Path(fc.path).resolve()), params=chosen,
        val_split=val_split if "val" not in fc.splits else None, seed=seed,
        split_sha256=split_digest(fc.paths, parts),
        fitted_on="train+val" if found and found.fitted is None else "train", timings=timings,
        **({"search": dict(trials=[t.to_dict() for t in found.trials], chosen=found.best.params)}
           if found else {}),
        **({"data": str(data)} if data else {}))


def _pictures(fc: FeatureCache, model: str, metrics: dict, found: SearchResult | None,
              history: list | None) -> dict[str, Picture]:
    """The bundle's pictures (``plots``' functions and their arguments): the confusion matrix of
    validation where ``metrics`` (split -> figures) have it, the training curves, the search."""
    title = f"{model} on {fc.attrs['backbone']}"
    shown = "val" if "val" in metrics else next(iter(metrics))
    m = metrics[shown]
    pictures = {f"confusion_{shown}.png": ("confusion_matrix_png", dict(
        matrix=np.array(m["confusion"]), classes=fc.classes,
        title=f"{title}: {shown} accuracy {m['accuracy']:.3f}"))}
    if history:
        pictures["history.png"] = ("history_png", dict(history=history, title=f"{title}: training curves"))
    if found:
        pictures["search.png"] = ("search_png", dict(trials=[t.to_dict() for t in found.trials],
                                                     chosen=found.best.params,
                                                     title=f"{title}: the search on val"))
    return pictures
