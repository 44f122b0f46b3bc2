"""Pictures of results: PNG files drawn on matplotlib Figures (no pyplot, so no GUI backend and no
global state changed in the caller's process)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def _plain(text: str) -> str:
    """Text as matplotlib draws it literally: a pair of ``$`` would start its mathtext (a class
    folder named ``$\\foo{$`` ended a run in a parse error), so every ``$`` is escaped."""
    return text.replace("$", r"\$")


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Rows are true classes, columns predicted; cells show counts, colour the row fraction."""
    from matplotlib.figure import Figure

    n = len(classes)
    # Up to 30 classes each cell carries its count and each axis its names; past that the matrix is
    # a picture of its pattern alone, which 10 inches show (and a 20-inch PNG took a second to draw).
    size = min(max(4.0, 2 + 0.6 * n), 20) if n <= 30 else 10.0
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
        ax.set_xticks(range(n), [_plain(c) for c in classes], rotation=45, ha="right")
        ax.set_yticks(range(n), [_plain(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_plain(textwrap.fill(title, width=int(8 * (size + 1)))), fontsize=10)
    if n <= 30:  # the class names take the room they need
        fig.tight_layout()
    else:  # fixed margins, as a few numbers label the axes: tight_layout took a third of the time
        fig.subplots_adjust(left=0.07, right=0.97, bottom=0.07, top=0.93)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def history_png(history: list[dict], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train and val side by side; epoch 0 is the starting head."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A head streamed from disk records its training loss alone: no empty accuracy chart for it.
    metrics = [m for m in ("loss", "accuracy")
               if any(h.get(f"{split}_{m}") is not None for h in history for split in ("train", "val"))]
    fig = Figure(figsize=(5 * len(metrics), 4))
    for ax, metric in zip(np.atleast_1d(fig.subplots(1, len(metrics))), metrics, strict=True):
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
    fig.suptitle(_plain(title), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def search_png(trials: list[dict], chosen: dict, path: Path, title: str) -> Path:
    """Validation accuracy and loss of each setting tried (``trials``, as bundle.json records
    them: ``params``, ``val_accuracy``, ``val_loss``), the ``chosen`` parameters marked: against
    the parameter where one varies (on a log axis where it spans decades), else one bar per
    setting."""
    from matplotlib.figure import Figure

    varying = [k for k in chosen if len({t["params"][k] for t in trials}) > 1]
    best = [t["params"] for t in trials].index(chosen)
    fig = Figure(figsize=(10, 4) if len(varying) == 1 else (8, 1.5 + 0.35 * len(trials)))
    fig.suptitle(_plain(title), fontsize=10)
    if len(varying) == 1:
        _curves(fig, trials, best, varying[0])
    else:
        _bars(fig, trials, best)
        fig.tight_layout()  # the settings' labels are as long as their parameters make them
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _curves(fig, trials: list[dict], best: int, key: str) -> None:
    """Accuracy and loss against ``key``, the chosen setting (``trials[best]``) starred. Drawn in
    fixed margins, with plain tick labels and no minor ticks: tight_layout, a log axis's mathtext
    labels and its minor ticks took two thirds of the picture's 0.3 s, and its labels here are a
    few numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    x = [t["params"][key] for t in trials]
    axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.07, right=0.98, bottom=0.13, top=0.86,
                                                wspace=0.22))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        y = [t[f"val_{metric}"] for t in trials]
        ax.plot(x, y, "o-")
        ax.plot([x[best]], [y[best]], "r*", markersize=14)
        if min(x) > 0 and max(x) / min(x) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            if len(set(x)) <= 6:  # a few settings (k of knn): each one's tick, not decades
                ax.xaxis.set_major_locator(FixedLocator(sorted(set(x))))
        ax.set_xlabel(_plain(f"{key} (red star: chosen)"))
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)


def _bars(fig, trials: list[dict], best: int) -> None:
    """One bar of validation accuracy per setting, the chosen one (``trials[best]``) red."""
    ax = fig.subplots()
    labels = [_plain(", ".join(f"{k}={v:g}" for k, v in t["params"].items())) for t in trials]
    accuracy = [t["val_accuracy"] for t in trials]
    ax.barh(range(len(trials)), accuracy,
            color=["tab:red" if i == best else "tab:blue" for i in range(len(trials))])
    ax.set_yticks(range(len(trials)), labels, fontsize=8)
    low = min(accuracy)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("val accuracy (red: chosen)")


def image_grid_png(images: list[np.ndarray], captions: list[str], path: Path, title: str,
                   wrong: list[bool] | None = None, columns: int = 8) -> Path:
    """Images (H×W×3 uint8) in a grid, each with its caption; ``wrong`` ones framed and captioned
    in red."""
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    # Constrained layout keeps the title clear of the captions, which tight_layout does not.
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.set_axis_off()
            continue
        bad = bool(wrong and wrong[i])
        ax.imshow(images[i])
        ax.set_title(_plain(textwrap.fill(captions[i], 22)), fontsize=8, color="red" if bad else "black")
        for side in ax.spines.values():
            side.set_color("red" if bad else "0.8")
            side.set_linewidth(3 if bad else 0.5)
    fig.suptitle(_plain(title), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
