"""Saving a fitted head into a bundle folder, and loading it back.

Torch heads are stored as plain tensors (loaded with ``weights_only=True``), the others with
joblib, scikit-learn's own format.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import torch
from sklearn.base import BaseEstimator

from ..files import durable_write
from .torch_head import TorchHead, head_module


def save_head(head: BaseEstimator, folder: Path) -> dict:
    """Write the fitted head into ``folder``; returns what ``load_head`` needs to read it back."""
    if isinstance(head, TorchHead):
        state = dict(head.module_.state_dict(), classes=torch.from_numpy(head.classes_))
        with durable_write(folder / "head.pt") as tmp:
            torch.save(state, tmp)
        return dict(format="torch", file="head.pt", params=head.get_params(),
                    n_features=head.n_features_in_)
    with durable_write(folder / "head.joblib") as tmp:
        joblib.dump(head, tmp)
    return dict(format="joblib", file="head.joblib")


def load_head(folder: Path, meta: dict) -> BaseEstimator:
    path = folder / meta["file"]
    if meta["format"] == "torch":
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = TorchHead(**meta["params"])
        head.classes_ = state.pop("classes").numpy()
        head.n_features_in_ = meta["n_features"]
        head.module_ = head_module(meta["n_features"], len(head.classes_), head.hidden, head.dropout)
        head.module_.load_state_dict(state)
        head.module_.eval()
        return head
    return joblib.load(path)
