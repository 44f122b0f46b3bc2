"""TensorBoard logs, optional: each epoch's figures as scalars, and the confusion matrix as an
image, for ``--tensorboard DIR`` on fine-tuning and on the torch heads. The ``tensorboard``
package is an extra (``featx[tensorboard]``); asking for logs without it fails before any work."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError


class Board:
    """One run's log in ``folder``: ``epoch`` adds a history row's figures, ``picture`` a PNG."""

    def __init__(self, folder: str | os.PathLike):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"`tensorboard` {folder} is a file, and TensorBoard logs go in a "
                              f"folder: choose another")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise ConfigError("`tensorboard` needs the tensorboard package: pip install "
                              "'featx[tensorboard]' (or pip install tensorboard)") from e
        self.writer = SummaryWriter(log_dir=str(folder))

    def epoch(self, row: dict) -> None:
        """The numbers of a history row, at step ``epoch``: ``train_loss`` as ``loss/train``, so
        that TensorBoard draws train and val in one chart; the others (lr, seconds) by name."""
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            split, _, metric = key.partition("_")
            self.writer.add_scalar(f"{metric}/{split}" if metric in ("loss", "accuracy") else key,
                                   value, row["epoch"])

    def picture(self, tag: str, png: Path, step: int) -> None:
        from PIL import Image

        with Image.open(png) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def fitted(self, history: list[dict], confusion: Path, step: int | None = None) -> None:
        """A model fitted: each epoch of its ``history`` not logged yet, then its ``confusion``
        matrix at ``step`` (None: its last epoch); closed."""
        for row in history:
            self.epoch(row)
        self.picture("confusion", confusion, len(history) if step is None else step)
        self.close()

    def close(self) -> None:
        self.writer.close()

