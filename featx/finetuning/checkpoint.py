"""What a fine-tune keeps as it goes: a durable checkpoint after every epoch (weights, optimizer,
schedule, scaler, history, the best epoch so far), so that an interrupted run continues where it
stopped; and the history as JSON, CSV and a picture.

All of it lives in a folder of its own beside the bundle (``state_folder``), never in it: the
bundle is written whole at the end, so the previous one there stays usable throughout the run and
after any kill."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

from ..errors import ConfigError
from ..evaluation import Predictions
from ..reporting.plots import history_png
from ..util.state_file import load_state, save_state
from .loop import Trainer
from .model import Classifier
from .recipe import AFTER_TRAINING
from .records import HistoryRow, Snapshot

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


def state_folder(out: Path) -> Path:
    """Where the fine-tune whose bundle goes to ``out`` keeps its checkpoint and history."""
    return out.with_name(out.name + ".partial")


def snapshot(epoch: int, val_metrics: dict, predictions: Predictions, model: Classifier,
             keys: list[str]) -> Snapshot:
    """What is kept of an epoch (the first, the best): its validation metrics and predictions,
    and its weights, those named in ``keys`` (``model.learned_keys``: the rest never change)."""
    state = model.state_dict()
    return Snapshot(epoch, val_metrics, dataclasses.asdict(predictions),
                    {k: state[k].detach().cpu().clone() for k in keys})


def write_history(history: list[HistoryRow], out: Path, title: str) -> Path:
    rows = [h.to_dict() for h in history]
    (out / "history.json").write_text(json.dumps(rows, indent=1))
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return history_png(rows, out / "history.png", title)


def save(path: Path, config: dict, model: Classifier, trainer: Trainer, history: list[HistoryRow],
         start: Snapshot, best: Snapshot) -> None:
    save_state(path, dict(config=config, model=model.state_dict(), optimizer=trainer.optimizer.state_dict(),
                          scheduler=trainer.scheduler.state_dict(), scaler=trainer.scaler.state_dict(),
                          history=[h.to_dict() for h in history], start=start.to_dict(), best=best.to_dict()))


def check_start(path: Path, resume: bool) -> None:
    """Refuse to overwrite an unfinished fine-tune, or to resume one that is not there."""
    if path.exists() and not resume:
        raise ConfigError(f"{path.parent} holds an unfinished fine-tune ({path}): add `resume=True` to "
                          f"continue it, or delete that folder to start over")
    if resume and not path.exists():
        raise ConfigError(f"nothing to resume: {path} does not exist; run without `resume=True`")


def resume(path: Path, config: dict, model: Classifier, trainer: Trainer
           ) -> tuple[list[HistoryRow], Snapshot, Snapshot]:
    """Load the checkpoint into ``model`` and ``trainer``, refusing one made with another recipe;
    returns its history, first epoch and best epoch."""
    # On the CPU: load_state_dict copies each tensor to where its parameter lives.
    try:
        state = load_state(path)
    except ValueError as e:
        raise ConfigError(f"cannot read {path} ({e}): delete it and run without `resume=True`") from e
    if "start" not in state:  # an earlier featx kept less
        raise ConfigError(f"{path} was written by an earlier featx: delete it and run without `resume=True`")
    for key, value in config.items():
        if key not in AFTER_TRAINING and state["config"].get(key) != value:
            raise ConfigError(f"`resume=True`: the interrupted run had {key}={state['config'].get(key)}, "
                              f"this one has {key}={value}: run with the same settings")
    model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when the interrupted run needed no scaler (CPU, bfloat16)
        trainer.scaler.load_state_dict(state["scaler"])
    log.info("resuming after epoch %d", state["history"][-1]["epoch"])
    return [HistoryRow(**h) for h in state["history"]], Snapshot(**state["start"]), Snapshot(**state["best"])
