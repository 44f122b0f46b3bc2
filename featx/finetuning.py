"""Stage four: fine-tune the top of the base end to end, starting from the bundle fit-head wrote.

The fitted head becomes a torch layer on the backbone that predicts exactly as before (epoch 0 of
the history measures it), the top blocks of the base are unfrozen with BatchNorm statistics kept
frozen, and both train at a low rate on augmented images. Every epoch ends with a validation pass
and a checkpoint: the best epoch is what is kept, and an interrupted run continues where it was.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn
from tqdm.auto import tqdm

from .augmentation import AUGMENTATIONS, check_augment, train_transform
from .backbones import FeatureExtractor, blocks, save_weights
from .bundle import Bundle, load_bundle
from .cache import open_cache
from .data import SPLITS, Dataset, ImageReader, collate, scan
from .errors import BundleError, CacheError, ConfigError, DataError
from .extraction import autocast_for, default_workers, resolve_device, run_batches
from .files import durable_write
from .heads import TorchHead, as_torch_head
from .plots import confusion_matrix_png, history_png
from .scoring import backbone_for
from .training import metrics, split_digest, split_indices

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
# Settings a resumed run must share with the run it continues; the rest only say where and how
# fast it runs.
_RECIPE = ("source", "data", "unfreeze", "train_bn", "epochs", "batch_size", "lr", "lr_decay",
           "weight_decay", "warmup", "clip", "augment", "patience", "seed")


class Classifier(nn.Module):
    """Backbone and head as one network: uint8 images in, logits out."""

    def __init__(self, extractor: FeatureExtractor, head: nn.Module):
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(images))


@dataclass
class FinetuneResult:
    bundle: Path
    metrics: dict           # split -> {"n", "accuracy", "loss"}, with the best epoch's weights
    history: list[dict]     # one row per epoch; epoch 0 is the head as fit-head left it
    best_epoch: int
    unfreeze: str
    trainable: int          # parameters
    frozen: int
    seconds: float
    plots: list[Path]

    def summary(self) -> str:
        def cell(v, fmt):
            return format(v, fmt) if v is not None else format("-", f">{fmt.split('.')[0]}")

        lines = [f"{'epoch':>5s} {'lr':>8s} {'train loss':>10s} {'train acc':>9s} {'val loss':>8s} "
                 f"{'val acc':>7s} {'seconds':>7s} {'img/s':>6s}"]
        lines += [f"{h['epoch']:5d} {cell(h['lr'], '8.1e')} {cell(h['train_loss'], '10.4f')} "
                  f"{cell(h['train_accuracy'], '9.4f')} {h['val_loss']:8.4f} {h['val_accuracy']:7.4f} "
                  f"{h['seconds']:7.1f} {cell(h['images_per_second'], '6.1f')}" for h in self.history]
        head, best = self.history[0], self.history[self.best_epoch]
        lines.append(f"val accuracy: head {head['val_accuracy']:.4f} -> fine-tuned "
                     f"{best['val_accuracy']:.4f} (best epoch {self.best_epoch}, {self.unfreeze} "
                     f"unfrozen, {self.trainable:,} of {self.trainable + self.frozen:,} parameters)")
        if "test" in self.metrics:
            lines.append(f"test accuracy: {self.metrics['test']['accuracy']:.4f} "
                         f"(n={self.metrics['test']['n']}, loss {self.metrics['test']['loss']:.4f})")
        lines.append(f"fine-tuned in {self.seconds:.0f} s -> {self.bundle}")
        return "\n".join(lines)


def resolve_unfreeze(unfreeze: str, extractor: FeatureExtractor) -> tuple[str, list[nn.Module]]:
    """``auto`` (the backbone's default: its own, else the top third), ``top:N``, ``all`` or
    ``none``; returns it as ``top:N`` and the blocks it names, lowest first."""
    found = blocks(extractor.base)
    if unfreeze == "auto":
        n = extractor.spec.finetune_top or math.ceil(len(found) / 3)
    elif unfreeze in ("all", "none"):
        n = len(found) if unfreeze == "all" else 0
    elif unfreeze.startswith("top:") and unfreeze[4:].isdigit():
        n = int(unfreeze[4:])
    else:
        raise ConfigError(f"--unfreeze {unfreeze!r}: use top:N (the last N of {extractor.spec.name}'s "
                          f"{len(found)} blocks), all, none or auto")
    if n > len(found):
        raise ConfigError(f"--unfreeze {unfreeze}: {extractor.spec.name} has only {len(found)} blocks; "
                          f"use top:{len(found)} or all")
    return f"top:{n}", found[len(found) - n:]


def _partition(dataset: Dataset, source: Bundle) -> dict[str, np.ndarray]:
    """Sample indices per split: the split the head was fitted and validated on, so that epoch 0
    and the fine-tuned epochs are measured on the same held-out images."""
    assigned = np.array([s.split for s in dataset.samples])
    if "val" not in assigned:
        # fit-head held out a seeded part of train: the cache says which images, as long as it
        # has not changed since.
        info = source.info
        try:
            fc = open_cache(info.get("cache", ""))
        except CacheError as e:
            raise DataError(f"{dataset.root} has no val/ folder, and the cache that says which "
                            f"images the head in {source.path} was validated on cannot be read "
                            f"({e})") from e
        parts = split_indices(fc.splits, fc.labels, info.get("val_split") or 0.0, info.get("seed", 0))
        now = split_digest(fc.paths, parts)
        if info.get("split_sha256", now) != now:
            raise DataError(f"{fc.path} has changed since the head in {source.path} was fitted, so "
                            f"the images it was validated on are no longer known: fit the head "
                            f"again, then fine-tune")
        # By path, as the cache has no rows for unreadable images; images added since go to train.
        held = {fc.paths[i]: name for name, idx in parts.items() for i in idx}
        assigned = np.array([held.get(s.path.as_posix(), s.split) for s in dataset.samples])
    return {name: np.flatnonzero(assigned == name) for name in SPLITS if (assigned == name).any()}


def _subset(dataset: Dataset, idx: np.ndarray) -> Dataset:
    return dataclasses.replace(dataset, samples=tuple(dataset.samples[i] for i in idx))


def _param_groups(model: Classifier, top: list[nn.Module], lr: float, lr_decay: float,
                  weight_decay: float) -> list[dict]:
    """The head and the top block learn at ``lr``, each block below at ``lr_decay`` times the rate
    of the one above; biases and norm scales get no weight decay."""
    groups = []
    for depth, unit in enumerate([model.head, *reversed(top)]):
        rate = lr * lr_decay ** max(depth - 1, 0)
        params = [p for p in unit.parameters() if p.requires_grad]
        groups += [dict(params=[p for p in params if p.ndim > 1], lr=rate, weight_decay=weight_decay),
                   dict(params=[p for p in params if p.ndim <= 1], lr=rate, weight_decay=0.0)]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1)))


def _train_mode(model: Classifier, top: list[nn.Module], train_bn: bool) -> None:
    # Frozen blocks stay in inference mode, and so do BatchNorm layers in the unfrozen ones unless
    # asked: their running statistics, estimated on all of ImageNet, are worth more than any
    # re-estimate from a few small batches.
    model.eval()
    model.head.train()
    for block in top:
        block.train()
        if not train_bn:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


@dataclass
class _Epoch:
    loss: float
    accuracy: float
    images: int
    skipped: int


def _train_epoch(model: Classifier, loader: torch.utils.data.DataLoader, targets: torch.Tensor,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
                 clip: float, lr_at, step: int, bar: tqdm) -> _Epoch:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    for batch in loader:
        skipped += len(batch.failed)
        bar.update(len(batch.indices) + len(batch.failed))
        if batch.images is None:
            continue
        x = batch.images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = targets[batch.indices].to(device, non_blocking=True)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_at(step)
        with autocast_for(device):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    if not seen:
        raise DataError("no training image could be read: `featx extract` lists why")
    return _Epoch(total_loss / seen, correct / seen, seen, skipped)


def _evaluate(model: Classifier, subset: Dataset, device: torch.device, batch_size: int,
              workers: int | None, progress: bool, desc: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics over ``subset`` with the plain (unaugmented) crop, and the labels and
    probabilities they came from."""
    model.eval()
    idx, proba = [], []
    for out in run_batches(model.extractor, subset, device, batch_size, workers, progress, desc):
        if len(out.indices):
            # In float32, as fit-head's figures are, whatever precision the backbone ran in.
            with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                logits = model.head(torch.from_numpy(out.features).to(device))
            proba.append(logits.double().softmax(1).cpu().numpy())
            idx += out.indices
    if not idx:
        raise DataError(f"no {desc} image could be read: `featx extract` lists why")
    y = np.array([subset.samples[i].label for i in idx])
    proba = np.concatenate(proba)
    return metrics(y, proba, len(subset.classes)), y, proba


def _save_durably(obj, path: Path) -> None:
    with durable_write(path) as tmp:
        torch.save(obj, tmp)


def _write_history(history: list[dict], out: Path, title: str) -> Path:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    return history_png(history, out / "history.png", title)


def _snapshot(epoch: int, val_metrics: dict, labels: np.ndarray, proba: np.ndarray,
              model: Classifier) -> dict:
    """What is kept of the best epoch: its weights, and its validation predictions."""
    return dict(epoch=epoch, metrics=val_metrics, labels=torch.from_numpy(labels),
                proba=torch.from_numpy(proba),
                state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def _check_limits(s: dict) -> None:
    limits = dict(epochs=(s["epochs"] >= 1, "at least 1"), batch_size=(s["batch_size"] >= 1, "at least 1"),
                  lr=(s["lr"] > 0, "above 0"), lr_decay=(0 < s["lr_decay"] <= 1, "above 0 and at most 1"),
                  weight_decay=(s["weight_decay"] >= 0, "at least 0"),
                  warmup=(s["warmup"] >= 0, "at least 0"),
                  clip=(s["clip"] >= 0, "at least 0 (0: no clipping)"),
                  patience=(s["patience"] >= 1, "at least 1"))
    for name, (ok, allowed) in limits.items():
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} {s[name]}: must be {allowed}")


def _write_bundle(out: Path, model: Classifier, head: TorchHead, source: Bundle, results: dict,
                  best: dict, info: dict) -> list[Path]:
    """The fine-tuned bundle: backbone file, head, bundle.json, and the validation confusion PNG."""
    model.cpu()
    extractor = model.extractor
    weights = save_weights(extractor, out / "backbone.pt")
    identity = dict(extractor.identity(), weights_sha256=weights.sha256, weights_path=weights.path.name)
    head.module_.eval()
    Bundle(identity=identity, classes=list(source.classes), head=head,
           model="mlp" if head.hidden else "linear", metrics=results, info=info).save(out)
    matrix = confusion_matrix(best["labels"].numpy(), best["proba"].numpy().argmax(1),
                              labels=range(len(source.classes)))
    return [confusion_matrix_png(matrix, list(source.classes), out / "confusion_val.png",
                                 f"fine-tuned {extractor.spec.name}: val accuracy "
                                 f"{best['metrics']['accuracy']:.3f} (epoch {best['epoch']})")]


def finetune(data: str | os.PathLike, bundle: str | os.PathLike | Bundle,
             out: str | os.PathLike | None = None, unfreeze: str = "auto", train_bn: bool = False,
             epochs: int = 10, batch_size: int = 32, lr: float = 1e-4, lr_decay: float = 1.0,
             weight_decay: float = 0.01, warmup: float = 1.0, clip: float = 1.0,
             augment: tuple[str, ...] = AUGMENTATIONS, patience: int = 3, seed: int = 0,
             resume: bool = False, device: str = "auto", workers: int | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune the backbone of ``bundle`` together with its head on the images in ``data``, and
    write a new bundle (default: ``<bundle>.finetuned``) holding the fine-tuned backbone.

    ``lr`` is AdamW's peak rate after ``warmup`` epochs, a tenth of the dense heads' rate, then a
    cosine decay; training stops after ``patience`` epochs without a better validation accuracy.
    """
    start = time.perf_counter()
    source = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if source.path is None:
        raise BundleError("fine-tuning starts from a saved bundle (it records the split and the "
                          "checkpoint beside it): call Bundle.save(folder) first")
    settings = dict(unfreeze=unfreeze, train_bn=train_bn, epochs=epochs, batch_size=batch_size, lr=lr,
                    lr_decay=lr_decay, weight_decay=weight_decay, warmup=warmup, clip=clip,
                    augment=list(check_augment(augment)), patience=patience, seed=seed)
    _check_limits(settings)
    dev = resolve_device(device)
    dataset = scan(data)
    if list(dataset.classes) != list(source.classes):
        raise DataError(f"{dataset.root} has classes {', '.join(dataset.classes)}, but the bundle "
                        f"{source.path} was fitted on {', '.join(source.classes)}: fine-tune on "
                        f"the data the head was fitted on")
    parts = _partition(dataset, source)
    if "val" not in parts:
        raise DataError("fine-tuning keeps the epoch with the best validation accuracy, so it needs "
                        "validation images: give data with a val/ folder, or fit the head with "
                        "--val-split above 0")

    head = as_torch_head(source.head)
    extractor = backbone_for(source)
    model = Classifier(extractor, head.module_)
    settings["unfreeze"], top = resolve_unfreeze(unfreeze, extractor)
    for block in top:
        block.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    log.info("%s: %s of %d blocks unfrozen: %s trainable and %s frozen parameters; BatchNorm "
             "statistics %s", extractor.spec.name, settings["unfreeze"], len(blocks(extractor.base)),
             f"{trainable:,}", f"{frozen:,}", "trained" if train_bn else "frozen")

    out = Path(out) if out else source.path.with_name(source.path.name + ".finetuned")
    out.mkdir(parents=True, exist_ok=True)
    config = dict(settings, source=str(Path(source.path).resolve()), data=str(dataset.root.resolve()))
    model.to(dev, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(_param_groups(model, top, lr, lr_decay, weight_decay))
    scaler = torch.amp.GradScaler(dev.type, enabled=getattr(autocast_for(dev), "fast_dtype", None)
                                  == torch.float16)
    train = _subset(dataset, parts["train"])
    val = _subset(dataset, parts["val"])
    workers = default_workers() if workers is None else workers
    steps_per_epoch = math.ceil(len(train.samples) / batch_size)

    def lr_at(step: int) -> float:
        return _lr_factor(step, round(warmup * steps_per_epoch), epochs * steps_per_epoch)

    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise ConfigError(f"{out} holds an unfinished fine-tune ({checkpoint}): add --resume to "
                          f"continue it, or delete that file to start over")
    if resume:
        if not checkpoint.exists():
            raise ConfigError(f"nothing to resume: {checkpoint} does not exist; run without --resume")
        # On the CPU: load_state_dict copies each tensor to where its parameter lives.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for key in _RECIPE:
            if state["config"][key] != config[key]:
                raise ConfigError(f"--resume: the interrupted run had {key}={state['config'][key]}, "
                                  f"this one has {key}={config[key]}: run with the same settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the interrupted run needed no scaler (CPU, bfloat16)
            scaler.load_state_dict(state["scaler"])
        history, best = state["history"], state["best"]
        log.info("resuming after epoch %d of %d", history[-1]["epoch"], epochs)
    else:
        t0 = time.perf_counter()
        val_metrics, y, proba = _evaluate(model, val, dev, batch_size, workers, progress, "val")
        history = [dict(epoch=0, lr=None, train_loss=None, train_accuracy=None,
                        val_loss=val_metrics["loss"], val_accuracy=val_metrics["accuracy"],
                        seconds=time.perf_counter() - t0, images_per_second=None)]
        best = _snapshot(0, val_metrics, y, proba, model)

    title = f"fine-tuning {extractor.spec.name} ({settings['unfreeze']}) from {source.path.name}"

    def save_checkpoint() -> None:
        _save_durably(dict(config=config, model=model.state_dict(), optimizer=optimizer.state_dict(),
                          scaler=scaler.state_dict(), history=history, best=best), checkpoint)
        _write_history(history, out, title)

    targets = torch.tensor([s.label for s in train.samples])
    transform = train_transform(extractor.preprocessing, settings["augment"])
    try:
        save_checkpoint()
        for epoch in range(history[-1]["epoch"] + 1, epochs + 1):
            if epoch - 1 - best["epoch"] >= patience:
                log.info("stopping early: no better validation accuracy for %d epochs", patience)
                break
            t0 = time.perf_counter()
            # Shuffling, augmentation (per image) and dropout are seeded by epoch, so a resumed run
            # sees what the uninterrupted run would have, with any number of workers.
            epoch_seed = seed * 100_003 + epoch
            reader = ImageReader(train.root, [s.path for s in train.samples], transform,
                                 seed=epoch_seed * 10_000_019)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(epoch_seed)
                loader = torch.utils.data.DataLoader(
                    reader, batch_size=batch_size, shuffle=True, num_workers=workers,
                    collate_fn=collate, pin_memory=dev.type == "cuda",
                    generator=torch.Generator().manual_seed(epoch_seed))
                _train_mode(model, top, train_bn)
                with tqdm(total=len(reader), unit="img", desc=f"epoch {epoch}/{epochs}",
                          disable=not progress, dynamic_ncols=True) as bar:
                    done = _train_epoch(model, loader, targets, optimizer, scaler, dev, clip, lr_at,
                                        (epoch - 1) * steps_per_epoch, bar)
            train_seconds = time.perf_counter() - t0
            val_metrics, y, proba = _evaluate(model, val, dev, batch_size, workers, progress, "val")
            history.append(dict(epoch=epoch, lr=lr * lr_at(epoch * steps_per_epoch - 1),
                                train_loss=done.loss, train_accuracy=done.accuracy,
                                val_loss=val_metrics["loss"], val_accuracy=val_metrics["accuracy"],
                                seconds=time.perf_counter() - t0,
                                images_per_second=(done.images + done.skipped) / train_seconds))
            if (val_metrics["accuracy"], -val_metrics["loss"]) > \
                    (best["metrics"]["accuracy"], -best["metrics"]["loss"]):
                best = _snapshot(epoch, val_metrics, y, proba, model)
            save_checkpoint()
    except BaseException:
        if checkpoint.exists():
            log.warning("stopped: the last finished epoch is saved in %s; run the same command with "
                        "--resume to continue", checkpoint)
        raise

    model.load_state_dict(best["state"])
    results = {"val": best["metrics"]}
    if "test" in parts:
        results["test"], _, _ = _evaluate(model, _subset(dataset, parts["test"]), dev, batch_size,
                                          workers, progress, "test")
    plots = _write_bundle(out, model, head, source, results, best, info=dict(
        finetuned_from=config["source"], data=config["data"], settings=settings,
        # Where its validation images are recorded, so the result can be fine-tuned again.
        **{k: source.info[k] for k in ("cache", "val_split", "seed", "split_sha256") if k in source.info},
        best_epoch=best["epoch"], head_val_accuracy=history[0]["val_accuracy"], history="history.csv"))
    plots.insert(0, out / "history.png")  # written with the last checkpoint
    checkpoint.unlink()
    return FinetuneResult(out, results, history, best["epoch"], settings["unfreeze"], trainable,
                          frozen, time.perf_counter() - start, plots)
