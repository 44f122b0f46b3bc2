"""Pictures of results: PNG files drawn on matplotlib Figures (no pyplot, so no GUI backend and no
global state changed in the caller's process)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Rows are true classes, columns predicted; cells show counts, colour the row fraction."""
    from matplotlib.figure import Figure

    n = len(classes)
    size = min(max(4.0, 2 + 0.6 * n), 20)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    rows = matrix.sum(1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                frac = matrix[i, j] / max(rows[i, 0], 1)
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if frac > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, width=int(8 * (size + 1))), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def history_png(history: list[dict], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train and val side by side; epoch 0 is the starting head."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split, style in (("train", "o--"), ("val", "o-")):
            points = [(h["epoch"], h[f"{split}_{metric}"]) for h in history
                      if h.get(f"{split}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
