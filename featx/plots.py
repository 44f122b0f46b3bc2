"""Pictures of results: PNG files written with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Rows are true classes, columns predicted; cells show counts, colour the row fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(2 + 0.6 * n, 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
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
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
