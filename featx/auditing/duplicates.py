"""Near-duplicate images found by their features, and exact ones by their bytes.

One photo resized and saved again, or cropped, has features closer to its original's than two
different photos usually have. How close is measured as the cosine of their features
once centred on the cache's mean (the features of a ReLU network are all positive, so that
uncentred, any two photos look alike), and, where the cache has the rows to estimate it, whitened:
projected on their ``COMPONENTS`` principal axes, each scaled to unit variance (plus a floor). Two
different meadows agree in the few broad axes that say "meadow"; a copy agrees with its original
in every axis, the many narrow ones included, and whitening gives those their weight. Measured on
Lite0 features (docs/commands/audit.md): hymenoptera's 153 validation photos re-encoded at JPEG
quality 70 and resized to 90 % are all 0.80 or more alike to their originals whitened (150 of
them centred only), while whitening cut flowers128's pairs at that level from 421 (most of them
similar scenes) to 41 (most of them crops of one photo). With fewer rows the axes are too poorly
estimated to whiten: at 120 rows whitening lost most copies, at 220 a few.

The search compares every pair, as blocked matrix products (a block of rows against a block of
columns, the upper triangle only), keeping at most ``NEIGHBOURS`` pairs per image among the images
after it: memory holds one block, never all pairs, and a thousand copies of one image do not make
half a million rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Principal axes the features are whitened in, and the rows per axis whitening needs.
COMPONENTS = 128
WHITEN_ROWS = 4 * COMPONENTS
# Variance added to each axis before scaling, as a share of the largest: axes of almost no
# variance (noise, or none at all) are not blown up to the weight of the rest.
FLOOR = 0.01
NEIGHBOURS = 5  # pairs kept per image, with the images after it
ROW_BLOCK, COLUMN_BLOCK = 1024, 8192  # a block of similarities: 32 MiB of float32
MOMENT_ROWS = 16384  # rows per product when the mean and covariance are summed (80 MiB)


def embedded(features: np.ndarray) -> np.ndarray:
    """The rows of ``features`` as unit vectors (float32) whose dot products are their
    similarities: centred, and with ``WHITEN_ROWS`` rows or more, whitened (module docstring).
    A row at the mean has no direction, and stays zero: similar to nothing."""
    n, d = features.shape
    mean = np.zeros(d)
    for start in range(0, n, MOMENT_ROWS):
        mean += features[start:start + MOMENT_ROWS].sum(0, dtype=np.float64)
    mean /= max(n, 1)
    project = None
    if whitens(n):
        covariance = np.zeros((d, d))
        for _, block in _centred(features, mean):
            covariance += block.T @ block
        from scipy.linalg import eigh

        # The top axes alone, by LAPACK's relatively robust representations: a fifth of the time
        # of all of them by NumPy's eigh (0.4 s and 2.4 s for 1,280 features).
        k = min(COMPONENTS, d)
        variances, axes = eigh(covariance / n, subset_by_index=[d - k, d - 1], driver="evr",
                               overwrite_a=True, check_finite=False)
        variances = np.maximum(variances, 0)
        project = (axes / np.sqrt(variances + FLOOR * variances.max())).astype(np.float32)
    out = np.empty((n, project.shape[1] if project is not None else d), np.float32)
    for start, block in _centred(features, mean):
        out[start:start + len(block)] = block @ project if project is not None else block
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return out


def _centred(features: np.ndarray, mean: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` of ``features`` less ``mean``, in float32, ``MOMENT_ROWS`` at a time."""
    centre = mean.astype(np.float32)
    for start in range(0, len(features), MOMENT_ROWS):
        yield start, np.asarray(features[start:start + MOMENT_ROWS], np.float32) - centre


def whitens(n: int) -> bool:
    """Whether ``embedded`` whitens features of ``n`` rows."""
    return n >= WHITEN_ROWS


def near_pairs(z: np.ndarray, threshold: float, neighbours: int = NEIGHBOURS,
               row_block: int = ROW_BLOCK, column_block: int = COLUMN_BLOCK
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of rows of ``z`` (unit vectors) whose dot product is ``threshold`` or more, as
    ``(first, second, similarity)`` with ``first < second``; of each row's pairs with the rows
    after it, the ``neighbours`` most similar."""
    n = len(z)
    found = []
    for start in range(0, n, row_block):
        stop = min(start + row_block, n)
        hits = []
        for left in range(start, n, column_block):
            right = min(left + column_block, n)
            sims = z[start:stop] @ z[left:right].T
            if left == start:
                np.fill_diagonal(sims, -np.inf)  # no row is a pair with itself
            # Rows with a pair are few: a maximum per row finds them in one read, where comparing
            # every similarity took as long as the product itself.
            near = np.flatnonzero(sims.max(1) >= threshold)
            rows, cols = np.nonzero(sims[near] >= threshold)
            rows, cols = near[rows], cols + left
            later = cols > rows + start  # the upper triangle: each pair once
            rows, cols = rows[later], cols[later]
            hits.append(_strongest(rows + start, cols, sims[rows, cols - left], neighbours))
        found.append(_strongest(*(np.concatenate(h) for h in zip(*hits, strict=True)), neighbours))
    first, second, similarity = (np.concatenate(f) for f in zip(*found, strict=True)) if found else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return first, second, similarity


def _strongest(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, keep: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of the pairs ``(rows, cols, sims)``, each row's ``keep`` most similar."""
    order = np.lexsort((-sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, int)
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    kept = rank < keep
    return rows[kept].astype(np.int64), cols[kept].astype(np.int64), sims[kept]


def same_bytes(sha256: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose files had the very same bytes: each paired with the first row of its bytes, as
    ``(first, second)``. Rows of no recorded hash (features written by ``write_cache``) have none."""
    first_of: dict[str, int] = {}
    pairs = []
    for row, digest in enumerate(sha256):
        if digest:
            first = first_of.setdefault(digest, row)
            if first != row:
                pairs.append((first, row))
    found = np.array(pairs, np.int64).reshape(-1, 2)
    return found[:, 0], found[:, 1]
