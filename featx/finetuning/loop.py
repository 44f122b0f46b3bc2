"""One epoch of fine-tuning, and the validation pass that measures it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.folders import Dataset
from ..errors import DataError
from ..evaluation import Predictions, metrics
from ..extraction.engine import autocast_for
from ..extraction.local import LocalEngine
from ..util.progress import Bar
from .model import Classifier


@dataclass
class Epoch:
    loss: float
    accuracy: float
    images: int
    skipped: int
    lr: float  # the peak group's rate at the epoch's last step


@dataclass
class Trainer:
    """What a training step needs besides the batch: the optimizer, its schedule, the gradient
    scaler (float16 on CUDA), where to run, and the norm to clip gradients to (0: none)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    clip: float

    def step(self, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One optimizer step on the batch; returns its logits and loss."""
        with autocast_for(self.device):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return logits.detach(), loss.item()


def train_epoch(model: Classifier, loader, targets: torch.Tensor, trainer: Trainer, bar: Bar) -> Epoch:
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    lr = trainer.optimizer.param_groups[0]["lr"]
    for batch in loader:
        skipped += len(batch.failed)
        bar.update(len(batch.indices) + len(batch.failed))
        if batch.images is None:
            continue
        x = batch.images.to(trainer.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = targets[batch.indices].to(trainer.device, non_blocking=True)
        lr = trainer.optimizer.param_groups[0]["lr"]
        logits, loss = trainer.step(model, x, y)
        total_loss += loss * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    if not seen:
        raise DataError("no training image could be read: `featx extract` lists why")
    return Epoch(total_loss / seen, correct / seen, seen, skipped, lr)


def evaluate(model: Classifier, subset: Dataset, engine: LocalEngine, desc: str) -> tuple[dict, Predictions]:
    """Metrics over ``subset`` with the plain (unaugmented) crop, and the predictions they came
    from, computed by ``engine`` (which runs the backbone as it is, ``eager``: it is being
    trained)."""
    model.eval()
    device = engine.placement.device
    idx, proba = [], []
    for out in engine.batches(model.extractor, subset, desc):
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
    return (metrics(y, proba, list(subset.classes)),
            Predictions.of([subset.samples[i].path.as_posix() for i in idx], y, proba))
