"""Stage three: fine-tune the top of the base end to end, starting from the bundle fit-head wrote.

The fitted head becomes a torch layer on the backbone that predicts exactly as before (epoch 0 of
the history measures it), the top blocks of the base are unfrozen with BatchNorm statistics kept
frozen, and both train at a low rate on augmented images. Every epoch ends with a validation pass
and a checkpoint, so an interrupted run continues where it was. The best epoch is then mixed with
the head's weights (WiSE-FT), and the best of those is kept only where its gain over the head is
larger than the validation images can resolve: otherwise the bundle is the head, unchanged, as a
fine-tune judged on a few images is as likely to be worse on new ones as better.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from ..backbones.extractor import blocks, save_weights
from ..bundle import BUNDLE_FILE, FITTED_FILE, Bundle, backbone_for, check_out, load_bundle, writing
from ..cache.reader import FeatureCache, open_cache
from ..data.augmentation import train_transform
from ..data.folders import SPLITS, Dataset
from ..data.manifest import Manifest, labelled
from ..data.readers import ImageReader, collate
from ..errors import BundleError, CacheError, DataError
from ..evaluation import (
    PREDICTIONS_FILE,
    Predictions,
    paired_gain,
    split_digest,
    split_indices,
    write_predictions,
)
from ..extraction.engine import autocast_for
from ..extraction.local import LocalEngine, start_worker
from ..extraction.placement import place
from ..fitting.joint import fitted
from ..heads.torch_head import TorchHead, as_torch_head
from ..reporting.plots import confusion_matrix_png
from ..reporting.tensorboard import Board
from ..runtime import Runtime
from ..util.files import own_folder
from ..util.progress import progress_bar
from . import checkpoint, loop
from .model import Classifier, learned_keys, mixed, param_groups, resolve_unfreeze, schedule, train_mode
from .recipe import Recipe
from .records import Candidate, HistoryRow, Mix, Snapshot, Verdict, plain

BACKBONE_FILE = "backbone.safetensors"
# WiSE-FT mixing weights tried first (0 is the head, 1 the best epoch), then the points this far
# either side of the best of them.
MIX_GRID = (0.25, 0.5, 0.75)
MIX_STEP = 0.125

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    bundle: Path
    metrics: dict           # split -> metrics (``evaluation.Tally``) of what the bundle holds
    history: list[HistoryRow]  # one row per epoch; epoch 0 is the head as fit-head left it
    best_epoch: int
    unfreeze: str
    trainable: int          # parameters
    frozen: int
    seconds: float
    plots: list[Path]
    mixing: list[Mix]       # each weight tried, 0 the head, 1 the best epoch
    verdict: Verdict
    finetuned_test: dict | None = None  # those weights' test metrics, kept or not
def _head_split(source: Bundle, needed: str) -> tuple[FeatureCache, dict[str, np.ndarray]]:
    """The cache the bundle's head was fitted on, and the split fit-head made of it, refused if
    the cache has changed since; ``needed`` ends the error where the cache cannot be read: what
    it is needed for, and the fix."""
    info = source.info
    try:
        fc = open_cache(info.get("cache", ""))
    except CacheError as e:
        raise DataError(f"cannot read the cache of the head in {source.path} ({e}): {needed}") from e
    parts = split_indices(fc.splits, fc.labels, info.get("val_split") or 0.0, info.get("seed", 0))
    now = split_digest(fc.paths, parts)
    if info.get("split_sha256", now) != now:
        raise DataError(f"{fc.path} has changed since the head in {source.path} was fitted, so "
                        f"the images it was fitted and validated on are no longer known: fit the "
                        f"head again, then fine-tune")
    return fc, parts


def _partition(dataset: Dataset, source: Bundle) -> dict[str, np.ndarray]:
    """Sample indices per split: the split the head was fitted and validated on, so that epoch 0
    and the fine-tuned epochs are measured on the same held-out images."""
    assigned = np.array([s.split for s in dataset.samples])
    if "val" not in assigned:
        # fit-head held out a seeded part of train: the cache says which images, as long as it
        # has not changed since.
        fc, parts = _head_split(source, f"{dataset.root} has no val/ folder, and the cache says which "
                                        f"images the head was validated on: extract it again")
        # By path, as the cache has no rows for unreadable images; images added since go to train.
        held = {fc.paths[i]: name for name, idx in parts.items() for i in idx}
        assigned = np.array([held.get(s.path.as_posix(), s.split) for s in dataset.samples])
    parts = {name: np.flatnonzero(assigned == name) for name in SPLITS if (assigned == name).any()}
    if "val" not in parts:
        raise DataError("fine-tuning keeps the epoch with the best validation accuracy, so it needs "
                        "validation images: give data with a val/ folder, or fit the head with "
                        "`val_split` above 0")
    return parts


def _source(data: str | os.PathLike, bundle: str | os.PathLike | Bundle,
            labels: str | os.PathLike | Manifest | None) -> tuple[Bundle, Dataset]:
    """The saved bundle to start from, and the data it was fitted on (its classes checked)."""
    source = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if source.path is None:
        raise BundleError("fine-tuning starts from a saved bundle (it records the split and the "
                          "checkpoint beside it): call Bundle.save(folder) first")
    dataset = labelled(data, labels)
    if list(dataset.classes) != list(source.classes):
        raise DataError(f"{dataset.root} has classes {', '.join(dataset.classes)}, but the bundle "
                        f"{source.path} was fitted on {', '.join(source.classes)}: fine-tune on "
                        f"the data the head was fitted on")
    return source, dataset


def _head_fitted_on_train(bundle: Bundle) -> BaseEstimator:
    """The bundle's head as fitted on train alone: its own, or, where a search fitted the chosen
    setting again on train+val, that setting fitted on train once more (seconds, from its cache),
    so that fine-tuning starts from a head that has not seen the images it is judged on."""
    if bundle.info.get("fitted_on") != "train+val":
        return bundle.head
    fc, parts = _head_split(bundle, "the search fitted the head on train+val, and fine-tuning starts "
                                    "from its setting fitted on train alone, from the cache: extract "
                                    "it again, or fit the head with `search=False`")
    train = parts["train"]
    params = bundle.info.get("params", {})
    log.info("%s was fitted on train+val: fine-tuning starts from its setting fitted on the %d "
             "train images alone", bundle.path, len(train))
    return fitted(bundle.model, params, fc.features[train], fc.labels[train])


@dataclass
class _Run:
    """A fine-tune being run: what it trains, on what, how, and where it writes."""

    model: Classifier
    head: TorchHead
    top: list[torch.nn.Module]
    recipe: Recipe                 # with ``unfreeze`` resolved to top:N
    trainer: loop.Trainer
    train: Dataset
    val: Dataset
    engine: LocalEngine            # for validation passes: the base as it is, at the recipe's batch size
    out: Path
    config: dict                   # what a resumed run must share with this one
    keys: list[str]                # the state entries training changes (``learned_keys``)

    @property
    def state(self) -> Path:
        return checkpoint.state_folder(self.out)

    @property
    def checkpoint(self) -> Path:
        return self.state / checkpoint.CHECKPOINT


def _prepare(source: Bundle, dataset: Dataset, parts: dict[str, np.ndarray], out: Path,
             recipe: Recipe, runtime: Runtime, resume: bool) -> _Run:
    head = as_torch_head(source.head)  # an svm or knn head is refused before it is fitted again
    if not resume:  # resumed, the checkpoint's weights replace the head's
        head = as_torch_head(_head_fitted_on_train(source))
    extractor = backbone_for(source)
    model = Classifier(extractor, head.module_)
    unfreeze, top = resolve_unfreeze(recipe.unfreeze, extractor)
    recipe = dataclasses.replace(recipe, unfreeze=unfreeze)
    for block in top:
        block.requires_grad_(True)
    engine = place(dataclasses.replace(runtime, execution="eager",
                                       batch_size=runtime.batch_size or recipe.batch_size))
    device = engine.placement.device
    if engine.placement.dtype != source.dtype:
        # Features 1e-2 apart at most, which training moves far more; the head meets these.
        log.info("the head was fitted on %s features; fine-tuning trains and validates in torch's "
                 "%s on %s, and its bundle is %s", source.dtype, engine.placement.dtype,
                 device.type, engine.placement.dtype)
    model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, top, recipe.lr, recipe.lr_decay, recipe.weight_decay))
    train = dataset.subset(parts["train"])
    trainer = loop.Trainer(
        optimizer, schedule(optimizer, recipe, math.ceil(len(train.samples) / recipe.batch_size)),
        torch.amp.GradScaler(device.type, enabled=getattr(autocast_for(device), "fast_dtype", None)
                             == torch.float16), device, recipe.clip)
    state = checkpoint.state_folder(out)
    try:
        own_folder(state)
    except OSError as e:
        raise BundleError(f"cannot write {e.filename or state} ({e.strerror or e}): remove it, or "
                          f"choose another `out`") from e
    config = dict(recipe.to_dict(), source=str(Path(source.path).resolve()),
                  data=str(dataset.root.resolve()))
    return _Run(model, head, top, recipe, trainer, train, dataset.subset(parts["val"]), engine,
                out, config, learned_keys(model, top))


def _parameters(run: _Run) -> tuple[int, int]:
    """How many parameters the run trains and how many it keeps frozen, said in the log."""
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in run.model.parameters()) - trainable
    log.info("%s: %s of %d blocks unfrozen: %s trainable and %s frozen parameters; BatchNorm statistics "
             "%s", run.model.extractor.spec.name, run.recipe.unfreeze, len(blocks(run.model.extractor)),
             f"{trainable:,}", f"{frozen:,}", "trained" if run.recipe.train_bn else "frozen")
    return trainable, frozen


def _start(run: _Run, resume: bool) -> tuple[list[HistoryRow], Snapshot, Snapshot]:
    """The history, epoch 0 (the head as it was) and the best trained epoch so far: the
    checkpoint's, or epoch 0 standing in for one, before any."""
    checkpoint.check_start(run.checkpoint, resume)
    if resume:
        return checkpoint.resume(run.checkpoint, run.config, run.model, run.trainer)
    t0 = time.perf_counter()
    val_metrics, predictions = loop.evaluate(run.model, run.val, run.engine, "val")
    history = [HistoryRow(epoch=0, lr=None, train_loss=None, train_accuracy=None,
                          val_loss=val_metrics["loss"], val_accuracy=val_metrics["accuracy"],
                          seconds=time.perf_counter() - t0, images_per_second=None)]
    start = checkpoint.snapshot(0, val_metrics, predictions, run.model, run.keys)
    return history, start, start


def _epoch(run: _Run, epoch: int) -> tuple[HistoryRow, tuple[dict, Predictions]]:
    """Train one epoch and validate it: its history row, and (metrics, predictions)."""
    t0, recipe, device = time.perf_counter(), run.recipe, run.trainer.device
    # Shuffling, augmentation (per image) and dropout are seeded by epoch, so a resumed run sees
    # what the uninterrupted run would have, with any number of workers.
    epoch_seed = recipe.seed * 100_003 + epoch
    reader = ImageReader(run.train.root, [s.path for s in run.train.samples],
                         train_transform(run.model.extractor.preprocessing, recipe.augment),
                         seed=epoch_seed * 10_000_019)
    targets = torch.tensor([s.label for s in run.train.samples])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch_seed)
        loader = torch.utils.data.DataLoader(
            reader, batch_size=recipe.batch_size, shuffle=True, collate_fn=collate,
            num_workers=run.engine.placement.workers_for(math.ceil(len(reader) / recipe.batch_size)),
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(epoch_seed),
            worker_init_fn=start_worker)
        train_mode(run.model, run.top, recipe.train_bn)
        with progress_bar(len(reader), f"epoch {epoch}/{recipe.epochs}",
                          enabled=run.engine.placement.progress) as bar:
            done = loop.train_epoch(run.model, loader, targets, run.trainer, bar)
    train_seconds = time.perf_counter() - t0
    val = loop.evaluate(run.model, run.val, run.engine, "val")
    return HistoryRow(epoch=epoch, lr=done.lr, train_loss=done.loss, train_accuracy=done.accuracy,
                      val_loss=val[0]["loss"], val_accuracy=val[0]["accuracy"],
                      seconds=time.perf_counter() - t0,
                      images_per_second=(done.images + done.skipped) / train_seconds), val


def _train(run: _Run, history: list[HistoryRow], start: Snapshot, best: Snapshot, title: str,
           board: Board | None) -> Snapshot:
    """Epochs until the last or until ``patience`` epochs bring no better validation accuracy,
    a checkpoint after each (and its figures to ``board``); returns the best trained epoch's
    snapshot (the head, epoch 0, is not one: it is weighed against this afterwards)."""
    def save(logged: bool = False) -> None:
        try:
            checkpoint.save(run.checkpoint, run.config, run.model, run.trainer, history, start, best)
            checkpoint.write_history(history, run.state, title)
        except OSError as e:  # a full disk, a folder made read-only meanwhile
            raise BundleError(f"cannot write {e.filename or run.state} ({e.strerror or e}): make "
                              f"room, or choose another `out`; {run.out} is as it was") from e
        if board is not None and not logged:
            board.epoch(history[-1].to_dict())

    try:
        save(logged=history[-1].epoch > 0)  # a resumed run's last epoch is in the log already
        for epoch in range(history[-1].epoch + 1, run.recipe.epochs + 1):
            if epoch - 1 - best.epoch >= run.recipe.patience:
                log.info("stopping early: no better validation accuracy for %d epochs", run.recipe.patience)
                break
            row, (val_metrics, predictions) = _epoch(run, epoch)
            history.append(row)
            if best.epoch == 0 or _rank(val_metrics) > _rank(best.metrics):
                best = checkpoint.snapshot(epoch, val_metrics, predictions, run.model, run.keys)
            save()
    except BaseException:
        if board is not None:  # what it holds is written out, not lost with the process
            board.close()
        if run.checkpoint.exists():
            log.warning("stopped: the last finished epoch is saved in %s; run the same command with "
                        "`resume=True` to continue", run.checkpoint)
        raise
    return best


def _rank(metrics: dict) -> tuple[float, float]:
    """Better is higher: validation accuracy, then lower loss."""
    return metrics["accuracy"], -metrics["loss"]


def _candidates(run: _Run, start: Snapshot, best: Snapshot) -> list[Candidate]:
    """What could be kept, each with its validation metrics and predictions, by its weight
    ``alpha`` on the way from the head (0) to the best trained epoch (1): those two, and with
    ``recipe.mix`` the WiSE-FT mixes between them, a grid and then the points either side of the
    best of it."""
    found = [Candidate(0.0, start.metrics, start.held()), Candidate(1.0, best.metrics, best.held())]

    def measure(alpha: float) -> None:
        run.model.load_state_dict(mixed(start.state, best.state, alpha), strict=False)
        val_metrics, predictions = loop.evaluate(run.model, run.val, run.engine, f"val, mixed {alpha:g}")
        found.append(Candidate(alpha, val_metrics, predictions))
        log.info("mixed %g of the way from the head: val accuracy %.4f", alpha, val_metrics["accuracy"])

    if run.recipe.mix:
        for alpha in MIX_GRID:
            measure(alpha)
        around = max(found, key=lambda c: _rank(c.metrics)).alpha
        for alpha in (around - MIX_STEP, around + MIX_STEP):
            if 0 < alpha < 1 and all(abs(c.alpha - alpha) > 1e-9 for c in found):
                measure(alpha)
    return sorted(found, key=lambda c: c.alpha)


def _verdict(candidates: list[Candidate], best_epoch: int, keep: str) -> tuple[Candidate, Verdict]:
    """The fine-tuned candidate with the best validation figures, and the verdict: its paired
    gain over the head on the same images, and whether it is kept (``Recipe.keep``)."""
    head = candidates[0]
    chosen = max(candidates[1:], key=lambda c: _rank(c.metrics))
    gain = paired_gain(head.predictions, chosen.predictions)
    kept = "finetuned" if keep == "finetuned" or gain.low > 0 else "head"
    return chosen, Verdict(**plain(gain), epoch=best_epoch, alpha=chosen.alpha, kept=kept)


def _write_head(run: _Run, source: Bundle, history: list[HistoryRow], title: str, info: dict) -> dict:
    """The bundle where the verdict keeps the head: the source bundle as fit-head wrote it (its
    head, backbone, figures and pictures), plus this run's history and verdict; returns its
    metrics."""
    bundle = Bundle(identity=source.identity, classes=list(source.classes), head=source.head,
                    model=source.model, dtype=source.dtype, metrics=source.metrics,
                    info={**source.info, **info})

    def copy_source(folder: Path) -> None:
        for name in source.files:  # what bundle.json lists, checked on load: not a stray report
            if name != BUNDLE_FILE:
                shutil.copy2(source.path / name, folder / name)
        checkpoint.write_history(history, folder, title)

    bundle.save(run.out, copy_source)
    return source.metrics


def _write_bundle(run: _Run, source: Bundle, results: dict, chosen: Candidate, held: dict[str, Predictions],
                  history: list[HistoryRow], title: str, info: dict) -> None:
    """The fine-tuned bundle, written whole over the run's folder: backbone, head, history, the
    validation confusion PNG and the held-out predictions, then bundle.json."""
    run.model.cpu()
    extractor = run.model.extractor
    run.head.module_.eval()
    bundle = Bundle(identity=extractor.identity(), classes=list(source.classes), head=run.head,
                    model="mlp" if run.head.hidden else "linear", dtype=run.engine.placement.dtype,
                    metrics=results, info=info)

    def backbone_and_pictures(folder: Path) -> None:
        weights = save_weights(extractor, folder / BACKBONE_FILE)
        bundle.identity = dataclasses.replace(bundle.identity, weights_sha256=weights.sha256,
                                              weights_file=BACKBONE_FILE)
        checkpoint.write_history(history, folder, title)
        confusion_matrix_png(np.array(chosen.metrics["confusion"]), list(source.classes),
                             folder / "confusion_val.png",
                             f"fine-tuned {extractor.spec.name}: val accuracy "
                             f"{chosen.metrics['accuracy']:.3f}")
        write_predictions(folder / PREDICTIONS_FILE, held, list(source.classes))
        if FITTED_FILE in source.files:  # trained on train, from a head fitted on no more than these
            shutil.copy2(source.path / FITTED_FILE, folder / FITTED_FILE)

    bundle.save(run.out, backbone_and_pictures)


def finetune(data: str | os.PathLike, bundle: str | os.PathLike | Bundle,
             out: str | os.PathLike | None = None, recipe: Recipe | None = None, resume: bool = False,
             runtime: Runtime | None = None, tensorboard: str | os.PathLike | None = None,
             labels: str | os.PathLike | Manifest | None = None) -> FinetuneResult:
    """Fine-tune the backbone of ``bundle`` together with its head on the images in ``data``, and
    write a new bundle (default: ``<bundle>.finetuned``) holding the fine-tuned backbone.

    ``recipe``: what to train and how (``Recipe``'s measured defaults when None). ``resume``:
    continue the interrupted run to ``out``, from its checkpoint in ``OUT.partial``; the bundle
    already at ``out``, if any, is replaced only once the new one is whole. ``runtime``: device,
    workers and progress; the base runs eagerly, being trained, and validates at the recipe's
    batch size unless it says one.
    ``tensorboard``: a folder for each epoch's figures and the confusion matrix. ``labels``: the
    manifest the head's cache was extracted with, if it was (``extract``'s).
    """
    start = time.perf_counter()
    recipe, runtime = recipe or Recipe(), runtime or Runtime()
    source, dataset = _source(data, bundle, labels)
    parts = _partition(dataset, source)
    out = Path(out) if out else source.path.with_name(source.path.name + ".finetuned")
    # One run to a bundle at a time: two would train into one checkpoint, one bundle's history
    # in the other's.
    with writing(out):
        check_out(out)  # before hours of training, not after
        board = Board(tensorboard) if tensorboard is not None else None
        run = _prepare(source, dataset, parts, out, recipe, runtime, resume)
        result = _tune(run, source, dataset, parts, board, start, resume)
        shutil.rmtree(run.state)  # only now: a kill before leaves the checkpoint to resume from
    return result


def _tune(run: _Run, source: Bundle, dataset: Dataset, parts: dict[str, np.ndarray], board: Board | None,
          start: float, resume: bool) -> FinetuneResult:
    """Train, choose what to keep, write the bundle over ``run.out``; ``start``: when the
    fine-tune began (``time.perf_counter``)."""
    out = run.out
    trainable, frozen = _parameters(run)
    name = run.model.extractor.spec.name
    history, first, best = _start(run, resume)
    title = f"fine-tuning {name} ({run.recipe.unfreeze}) from {source.path.name}"
    best = _train(run, history, first, best, title, board)
    candidates = _candidates(run, first, best)
    chosen, verdict = _verdict(candidates, best.epoch, run.recipe.keep)
    mixing = [Mix(c.alpha, c.metrics["accuracy"], c.metrics["loss"]) for c in candidates]
    info = dict(finetuned_from=run.config["source"], data=run.config["data"], settings=run.recipe.to_dict(),
                best_epoch=best.epoch, mixing=[m.to_dict() for m in mixing], verdict=verdict.to_dict(),
                head_val_accuracy=history[0].val_accuracy, history="history.csv")
    run.model.load_state_dict(mixed(first.state, best.state, chosen.alpha), strict=False)
    # Measured whether kept or not: a test split is there to show what the verdict chose against.
    test = loop.evaluate(run.model, dataset.subset(parts["test"]), run.engine, "test") \
        if "test" in parts else None
    if verdict.kept == "head":
        results = _write_head(run, source, history, title, dict(
            info, **({"finetuned_test": test[0]} if test else {}),
            timings=dict(source.info.get("timings", {}), finetune=time.perf_counter() - start)))
    else:
        results, held = {"val": chosen.metrics}, {"val": chosen.predictions}
        if test:
            results["test"], held["test"] = test
        _write_bundle(run, source, results, chosen, held, history, title, info=dict(
            info, trainable=trainable, frozen=frozen, timings=dict(finetune=time.perf_counter() - start),
            # Where its validation images are recorded, so the result can be fine-tuned again.
            **{k: source.info[k] for k in ("cache", "val_split", "seed", "split_sha256")
               if k in source.info}))
    plots = [out / "history.png", *([out / "confusion_val.png"] if verdict.kept == "finetuned" else [])]
    if board is not None and verdict.kept == "finetuned":
        board.fitted([], plots[-1], verdict.epoch)
    elif board is not None:
        board.close()
    return FinetuneResult(out, results, history, best.epoch, run.recipe.unfreeze, trainable,
                          frozen, time.perf_counter() - start, plots, mixing, verdict,
                          test[0] if test else None)
