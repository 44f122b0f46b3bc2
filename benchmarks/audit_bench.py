"""featx audit against its done-when, on real photos, and its duplicate search at scale.

    PYTHONPATH=. python benchmarks/audit_bench.py [--data DIR] [--rows 200000] [--parts real,copies,scale]

- real: hymenoptera with 5 % of its train labels flipped (seeded) and 20 val photos planted in
  train, re-encoded at JPEG quality 70 and resized to 90 %; flowers128 with 5 % flipped. Each is
  built as a copy of the folder tree in a temporary folder (links to the untouched photos, a
  flipped photo linked into another class's folder), extracted with `featx.extract` and audited
  with `featx.audit`'s defaults. Printed: the flips among the first k label rows (k = the flips),
  beside the same for confident learning's rule on the same out-of-fold probabilities; the
  planted copies among the pairs, and the other pairs; the audit's seconds.
- copies: what the similarity threshold was chosen on: every one of hymenoptera's 153 val photos
  planted the same way (551 images, so the features are whitened), and flowers128 as it is: at
  each threshold, the copies found and the other pairs.
- scale: the duplicate search alone (``duplicates.embedded`` and ``near_pairs``) on ``--rows`` x
  1,280 float32 synthetic features of a decaying spectrum, 1,000 of them near-copies of others:
  seconds, the peak of the memory it allocated, the planted pairs found and the others.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

import featx
from featx.auditing.duplicates import embedded, near_pairs
from featx.auditing.options import SIMILARITY
from featx.data.folders import find_images
from featx.util.files import size_text

FLIPPED = 0.05
PLANTED = 20
QUIET = featx.Runtime(progress=False)


def build(source: Path, target: Path, seed: int = 0, flip: float = FLIPPED, plant: int = PLANTED
          ) -> tuple[set[str], set[tuple[str, str]]]:
    """A copy of the folder ``source`` at ``target``: links to its photos, ``flip`` of train's
    linked into another class's folder, ``plant`` val photos saved again in train (JPEG quality
    70, 90 % of their size). Returns the flipped photos' new paths and the planted pairs (copy,
    original), as the cache will name them."""
    rng = np.random.default_rng(seed)
    photos = find_images(source)
    train = [p for p in photos if p.parts[0] not in ("val", "test")]
    classes = sorted({p.parts[-2] for p in photos})
    moved = {}
    for i in rng.choice(len(train), round(flip * len(train)), replace=False):
        others = [c for c in classes if c != train[i].parts[-2]]
        moved[train[i]] = train[i].parent.parent / others[rng.integers(len(others))] / train[i].name
    for p in photos:
        link = target / moved.get(p, p)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((source / p).resolve(), link)
    val = [p for p in photos if p.parts[0] == "val"]
    planted = set()
    for i in rng.choice(len(val), plant, replace=False) if plant else ():
        copy = Path("train", *val[i].parts[1:-1], f"copy_{val[i].stem}.jpg")
        with Image.open(source / val[i]) as image:
            image = image.convert("RGB")
            image.resize((round(image.width * 0.9), round(image.height * 0.9)),
                         Image.Resampling.BICUBIC).save(target / copy, quality=70)
        planted.add((copy.as_posix(), val[i].as_posix()))
    return {p.as_posix() for p in moved.values()}, planted


def confident_learning(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rows confident learning flags, ranked by margin: per-class thresholds at the mean
    probability of the class over its own rows; a row whose classes above their thresholds have
    their most probable one other than its label is off the diagonal of the confident joint;
    ranked by the given label's probability less the best other's, lowest first."""
    rows = np.arange(len(labels))
    thresholds = np.array([proba[labels == c, c].mean() for c in range(proba.shape[1])])
    above = proba >= thresholds
    confident = np.where(above, proba, -1).argmax(1)
    flagged = np.flatnonzero(above.any(1) & (confident != labels))
    others = proba.copy()
    others[rows, labels] = -1
    margin = proba[rows, labels] - others.max(1)
    return flagged[np.argsort(margin[flagged], kind="stable")]


def real(name: str, source: Path, plant: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flipped, planted = build(source, Path(tmp) / name, plant=plant)
        t0 = time.perf_counter()
        cache = featx.extract(Path(tmp) / name, out=Path(tmp) / f"{name}.h5", runtime=QUIET).path
        extracted = time.perf_counter() - t0
        cpu = time.process_time()
        r = featx.audit(cache)
        cpu = time.process_time() - cpu
        fc = featx.open_cache(cache)
        flips = np.array([p in flipped for p in fc.paths])
        k = int(flips.sum())
        top = sum(f.path in flipped for f in r.labels[:k])
        labelled = np.flatnonzero(fc.labels >= 0)
        cl = confident_learning(r.proba[labelled], fc.labels[labelled])
        pairs = {(f.path, f.other) for f in r.duplicates + r.leaks}
    print(f"{name}: {len(fc.paths)} images, {k} flipped; extracted in {extracted:.1f} s, audited in "
          f"{r.seconds:.1f} s ({cpu:.1f} s of CPU; C={r.C:g}, out-of-fold accuracy {r.accuracy:.4f})")
    print(f"  label rows: {len(r.labels)}; flips in the first {k}: {top} = {top / k:.3f} (confident "
          f"learning: {len(cl)} flagged, {int(flips[labelled][cl[:k]].sum()) / k:.3f})")
    if plant:
        print(f"  planted copies found: {len(planted & pairs)} of {len(planted)}; other pairs: "
              f"{len(pairs - planted)}")
    else:
        print(f"  pairs: {len(r.duplicates)} duplicates, {len(r.leaks)} leaks")


def copies(hymenoptera: Path, flowers: Path, thresholds=(0.7, 0.75, 0.8, 0.85, 0.9)) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, planted = build(hymenoptera, Path(tmp) / "hym", flip=0, plant=153)
        for name, folder, known in (("hymenoptera + its 153 val photos planted", Path(tmp) / "hym",
                                     planted), ("flowers128", flowers, set())):
            cache = featx.extract(folder, out=Path(tmp) / f"{folder.name}.h5", runtime=QUIET).path
            r = featx.audit(cache, similarity=min(thresholds))
            whitened = {(f.path, f.other): f.score for f in r.duplicates + r.leaks}
            centred = _centred_pairs(featx.open_cache(cache), min(thresholds))
            print(f"{name}: {r.n_images} images; copies found and other pairs at each similarity")
            for t in thresholds:
                line = [f"  {t:.2f}:"]
                for how, found in (("whitened (audit)", whitened), ("centred only", centred)):
                    above = {p for p, s in found.items() if s >= t}
                    line.append(f"{how} {len(above & known)} of {len(known)}, {len(above - known)} other;")
                print(" ".join(line))


def _centred_pairs(fc, threshold: float) -> dict[tuple[str, str], float]:
    """Every pair of the cache's images whose features, centred and not whitened (as the audit
    takes them below ``WHITEN_ROWS`` images), are ``threshold`` or more alike."""
    X = np.asarray(fc.features, np.float64)
    X -= X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sims = X @ X.T
    first, second = np.nonzero(np.triu(sims, 1) >= threshold)
    return {(fc.paths[a], fc.paths[b]): sims[a, b] for a, b in zip(first, second, strict=True)}


def synthetic(rows: int, dim: int = 1280, planted: int = 1000, seed: int = 0
              ) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Features of a decaying spectrum (a few broad axes, many narrow ones, as a CNN's are), and
    ``planted`` rows replaced by near-copies of others: noise of a third of each axis's spread."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(10, 0.1, dim).astype(np.float32)
    X = rng.standard_normal((rows, dim), dtype=np.float32)
    X *= spread
    chosen = rng.choice(rows, 2 * planted, replace=False)
    for original, copy in chosen.reshape(-1, 2):
        X[copy] = X[original] + rng.standard_normal(dim, dtype=np.float32) * spread / 3
    return X, {tuple(sorted(map(int, pair))) for pair in chosen.reshape(-1, 2)}


def scale(rows: int) -> None:
    X, planted = synthetic(rows)
    tracemalloc.start()
    cpu = time.process_time()
    t0 = time.perf_counter()
    z = embedded(X)
    t1 = time.perf_counter()
    first, second, _ = near_pairs(z, SIMILARITY)
    t2 = time.perf_counter()
    cpu = time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    print(f"duplicate search on {rows:,} x {X.shape[1]:,} float32 ({size_text(X.nbytes)}): embedded "
          f"in {t1 - t0:.1f} s, searched in {t2 - t1:.1f} s ({cpu:.0f} s of CPU); peak allocated "
          f"beyond the features {size_text(peak)}; planted pairs found {len(found & planted)} of "
          f"{len(planted)}, other pairs {len(found - planted)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"),
                   help="the folder holding hymenoptera/ and flowers128/")
    p.add_argument("--rows", type=int, default=200_000, help="synthetic rows of the scale part")
    p.add_argument("--parts", default="real,copies,scale", help="which parts, comma-separated")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    # Timings on a machine others share swing with its load (OpenBLAS's threads wait on busy cores).
    print("load average {:.2f} {:.2f} {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count()))
    if "real" in parts:
        real("hymenoptera", args.data / "hymenoptera", PLANTED)
        real("flowers128", args.data / "flowers128", 0)
    if "copies" in parts:
        copies(args.data / "hymenoptera", args.data / "flowers128")
    if "scale" in parts:
        scale(args.rows)


if __name__ == "__main__":
    main()
