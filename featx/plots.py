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
