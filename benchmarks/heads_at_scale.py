"""Heads at scale: `featx fit-head --model linear` on a synthetic cache far larger than its memory
budget (default 200,000 x 2,048 float32, 1.53 GiB), timed, with the peak RSS of the process.

    PYTHONPATH=. python benchmarks/heads_at_scale.py [--n 200000] [--dim 2048] [--keep]

The cache is written a window of rows at a time by featx's own writer, so this script never holds
the matrix either; fit-head runs in a child process, whose peak RSS the kernel reports at its exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import featx
from featx.fitting.options import STREAM_EPOCHS
from featx.util.files import size_text

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
# The distance between two class centres, in noise standard deviations, whatever the dimension:
# a linear head's val accuracy comes out short of 1 (about 0.98), so accuracy still tells.
SEPARATION = 6.0


class Blobs:
    """One Gaussian blob per class, N × dim rows generated on demand when sliced, as
    ``featx.write_cache`` reads them: the matrix is never held whole."""

    def __init__(self, labels: np.ndarray, dim: int, n_classes: int, seed: int):
        self.labels, self.seed = labels, seed
        self.shape = (len(labels), dim)
        rng = np.random.default_rng(seed)
        self.centres = 1 + rng.standard_normal((n_classes, dim), np.float32) * SEPARATION / np.sqrt(2 * dim)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        out = np.random.default_rng([self.seed, start]).standard_normal((stop - start, self.shape[1]),
                                                                        np.float32)
        out += self.centres[self.labels[start:stop]]
        return out


def write_blobs(path: Path, n: int, dim: int, classes: int = 10, seed: int = 0) -> Path:
    """A featx cache of ``n`` rows of Gaussian blobs, laid out as ``featx extract`` lays out a
    real one: split by split, sorted by class within each."""
    labels, splits = [], []
    for split, share in SPLITS.items():
        m = round(n * share) if split != "test" else n - len(splits)
        labels.append(np.arange(m) * classes // max(m, 1))
        splits += [split] * m
    labels = np.concatenate(labels)
    names = [f"class{c:02d}" for c in range(classes)]
    paths = [f"{s}/{names[y]}/{i:07d}.npy" for i, (s, y) in enumerate(zip(splits, labels, strict=True))]
    return featx.write_cache(path, Blobs(labels, dim, classes, seed), labels, names, paths=paths,
                             splits=splits)


def _run(command: list[str], log: Path) -> tuple[float, int]:
    """Run ``command`` with its output to ``log``: its wall time, and its own peak RSS in bytes
    (wait4 gives this child's, where getrusage would give the largest of all children's)."""
    with open(log, "wb") as out:
        t = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{log.read_text()}")
    return seconds, usage.ru_maxrss * 1024


def measure(n: int = 200_000, dim: int = 2048, classes: int = 10, workdir: str | os.PathLike = ".",
            in_memory: bool = False) -> dict:
    """Write the cache into ``workdir``, run `featx fit-head CACHE --model linear` on it in a child
    process and return what it took. ``in_memory``: the whole matrix read instead (with the
    streamed default of epochs, for a like-for-like time)."""
    cache = Path(workdir) / f"blobs-{n}x{dim}.h5"
    t = time.perf_counter()
    write_blobs(cache, n, dim, classes)
    written = time.perf_counter() - t
    command = [sys.executable, "-m", "featx", "fit-head", str(cache), "--model", "linear"]
    if in_memory:
        command += ["--max-memory", "1T", "-p", f"epochs={STREAM_EPOCHS}"]
    log = cache.with_suffix(".log")
    seconds, peak = _run(command, log)
    # What any fit-head takes before reading a feature: Python with featx, torch and scikit-learn.
    _, baseline = _run([sys.executable, "-c", "import featx.cli, featx.fitting.fit"],
                       log.with_suffix(".log0"))
    metrics = json.loads((cache.with_suffix(".linear") / "bundle.json").read_text())["metrics"]
    return dict(n=n, dim=dim, classes=classes, nbytes=n * dim * 4, file_bytes=cache.stat().st_size,
                write_seconds=written, seconds=seconds, peak_rss=peak, baseline_rss=baseline,
                accuracy=metrics["val"]["accuracy"], output=log.read_text(), command=command,
                in_memory=in_memory)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000, help="rows (default 200,000)")
    p.add_argument("--dim", type=int, default=2048, help="features per row (default 2,048)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--in-memory", action="store_true",
                   help="for comparison: the in-memory path, the whole matrix read (--max-memory 1T)")
    p.add_argument("--keep", action="store_true", help="keep the cache and bundle (default: deleted)")
    args = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="featx-heads-at-scale-")
    try:
        r = measure(args.n, args.dim, args.classes, workdir, in_memory=args.in_memory)
    finally:
        if not args.keep:
            shutil.rmtree(workdir)
    print(f"wrote {r['n']:,} x {r['dim']:,} float32 ({size_text(r['nbytes'])}; "
          f"{size_text(r['file_bytes'])} on disk) in {r['write_seconds']:.1f} s")
    print(r["output"].rstrip())
    path = "in memory" if r["in_memory"] else "streamed"
    print(f"fit-head linear ({path}) on {r['n']:,} x {r['dim']:,} float32 "
          f"({size_text(r['file_bytes'])} on disk): {r['seconds']:.1f} s, "
          f"peak RSS {size_text(r['peak_rss'])}, val accuracy {r['accuracy']:.3f}")
    print(f"(of the peak RSS, {size_text(r['baseline_rss'])} is the interpreter with featx, torch and "
          f"scikit-learn imported, before any feature is read)")
    if args.keep:
        print(f"kept in {workdir}")


if __name__ == "__main__":
    main()
