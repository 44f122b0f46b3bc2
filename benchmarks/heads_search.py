"""The logistic head's search against one scikit-learn fit, as whole processes, in one run.

    PYTHONPATH=. python benchmarks/heads_search.py [--flowers CACHE] [--sets flowers,many,noisy] [--pairs N]

For each cache: `featx fit-head CACHE` with its defaults (the search, the fit on train+val, the
bundle and its pictures) in a child process, against a child process that reads the same cache
and fits ONE scikit-learn `StandardScaler` + `LogisticRegression(C=0.1)` on its train rows (what
fit-head's head is without a search). Both print their held-out validation accuracy; the ratio is
fit-head's seconds over the script's, taken pair by pair (``--pairs N``: the two run in turn N
times, and the median ratio is printed with its range, as a machine shared with other work
drifts from one run to the next). The caches:

- flowers: flowers128's Lite0 features (`featx extract ../shared/data/flowers128` first; 3,453
  train x 1,280, 5 classes, val held out by fit-head's seeded split);
- many: 120 classes of 2-6 training images each (526 x 1,280, as the dog breeds the issue names),
  Gaussian blobs round per-class centres, 2 validation images a class;
- noisy: flowers128 x 10 (34,530 train rows), each copy with noise of a quarter of each feature's
  spread, the split kept per image;
- streamed: 200,000 x 2,048 Gaussian blobs of 10 classes (1.5 GiB, above fit-head's 1 GiB memory
  budget; ``heads_at_scale.py``'s), where the logistic head's search streams from disk: against
  today's default streamed fit, `featx fit-head CACHE --model linear` (one setting, 10 passes).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import featx
from featx.evaluation import split_indices

sys.path.insert(0, str(Path(__file__).parent))
from heads_at_scale import write_blobs

SCRIPT = """
import sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from featx.cache.reader import open_cache
from featx.evaluation import split_indices
fc = open_cache(sys.argv[1])
parts = split_indices(fc.splits, fc.labels, 0.2, 0)
X, y = np.asarray(fc.features), fc.labels
head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
head.fit(X[parts["train"]], y[parts["train"]])
print("val accuracy", (head.predict(X[parts["val"]]) == y[parts["val"]]).mean())
"""


def many_classes(path: Path, classes: int = 120, dim: int = 1280, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    per_class = rng.integers(2, 7, classes)
    labels = np.concatenate([np.full(k + 2, c) for c, k in enumerate(per_class)])
    splits = np.concatenate([["train"] * k + ["val"] * 2 for k in per_class])
    centres = rng.normal(0, 1, (classes, dim))
    features = (centres[labels] + rng.normal(0, 2.5, (len(labels), dim))).astype(np.float32)
    return featx.write_cache(path, features, labels, [f"class{c:03d}" for c in range(classes)],
                             splits=list(splits))


def noisy_copies(source: Path, path: Path, copies: int = 10, seed: int = 0) -> Path:
    fc = featx.open_cache(source)
    X = np.asarray(fc.features)
    held = split_indices(fc.splits, fc.labels, 0.2, 0)
    split = np.empty(len(X), object)
    for name, rows in held.items():
        split[rows] = name
    rng = np.random.default_rng(seed)
    spread = X.std(0) / 4
    features = np.concatenate([X + rng.normal(0, 1, X.shape).astype(np.float32) * spread
                               for _ in range(copies)])
    labels = np.tile(fc.labels, copies)
    return featx.write_cache(path, features, labels, list(fc.classes), splits=list(np.tile(split, copies)))


def timed(command: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout + out.stderr


def paired(first: list[str], second: list[str], pairs: int) -> tuple[float, float, str, str, str]:
    """Both commands run in turn ``pairs`` times: the median seconds of each, what each printed
    last, and the ratios of the pairs (median, then the range where there are several)."""
    runs = [(timed(first), timed(second)) for _ in range(pairs)]
    ratios = sorted(a[0] / b[0] for a, b in runs)
    said = f"{np.median(ratios):.2f}" + (f" ({ratios[0]:.2f}-{ratios[-1]:.2f} over {pairs} pairs)"
                                         if pairs > 1 else "")
    return (float(np.median([a[0] for a, _ in runs])), float(np.median([b[0] for _, b in runs])),
            runs[-1][0][1], runs[-1][1][1], said)


def compare(name: str, cache: Path, out: Path, pairs: int) -> None:
    featx_s, script_s, printed, said, ratio = paired(
        [sys.executable, "-m", "featx", "fit-head", str(cache), "--out", str(out)],
        [sys.executable, "-c", SCRIPT, str(cache)], pairs)
    val = re.search(r"^val\s+n=\d+\s+accuracy=([\d.]+)", printed, re.M).group(1)
    together = re.search(r"search logistic: (.*) settings of C trained together in ([\d.]+) s", printed)
    chosen = re.search(r"chosen on val: (\S+);", printed)
    print(f"{name:8s} fit-head {featx_s:6.1f} s (val {val}; {together.group(1)} settings together in "
          f"{together.group(2)} s; {chosen.group(1)})  |  one scikit-learn fit, C=0.1: {script_s:6.1f} s "
          f"(val {float(said.split()[-1]):.4f})  |  ratio {ratio}")


def streamed(name: str, cache: Path, out: Path, pairs: int) -> None:
    featx_s, linear_s, printed, said, ratio = paired(
        [sys.executable, "-m", "featx", "fit-head", str(cache), "--out", str(out)],
        [sys.executable, "-m", "featx", "fit-head", str(cache), "--model", "linear", "--out",
         str(out.with_suffix(".linear"))], pairs)
    val = re.search(r"^val\s+n=\d+\s+accuracy=([\d.]+)", printed, re.M).group(1)
    linear_val = re.search(r"^val\s+n=\d+\s+accuracy=([\d.]+)", said, re.M).group(1)
    together = re.search(r"search logistic: (\d+) settings of C trained together on streamed features "
                         r"in ([\d.]+) s", printed)
    print(f"{name:8s} fit-head {featx_s:6.1f} s (val {val}; {together.group(1)} settings together, "
          f"streamed, in {together.group(2)} s)  |  today's default streamed fit, --model linear: "
          f"{linear_s:6.1f} s (val {linear_val})  |  ratio {ratio}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flowers", type=Path, default=None,
                   help="flowers128's Lite0 cache (default: the one under cache/)")
    p.add_argument("--sets", default="flowers,many,noisy,streamed")
    p.add_argument("--pairs", type=int, default=1, help="times each pair runs, in turn (default 1)")
    args = p.parse_args(argv)
    flowers = args.flowers or next(Path("cache").glob("flowers128-efficientnet_lite0-avg-*.h5"), None)
    with tempfile.TemporaryDirectory(prefix="featx-heads-search-") as tmp:
        tmp = Path(tmp)
        caches = {"flowers": lambda: flowers, "many": lambda: many_classes(tmp / "many.h5"),
                  "noisy": lambda: noisy_copies(flowers, tmp / "noisy.h5"),
                  "streamed": lambda: write_blobs(tmp / "blobs.h5", 200_000, 2048)}
        for name in args.sets.split(","):
            cache = caches[name]()
            if cache is None:
                raise SystemExit("no flowers128 cache: run `featx extract ../shared/data/flowers128`")
            (streamed if name == "streamed" else compare)(name, cache, tmp / f"{name}.logistic",
                                                          args.pairs)


if __name__ == "__main__":
    main()
