"""Does fine-tuning help or hurt on a small set? Head against fine-tuned model on held-out test
images, on small subsets of flowers128 over several seeds.

Each subset takes N images per class for training (fit-head holds out 20 % of them for
validation, as it does for a user's folder without val/) and keeps every other image of the
class as test/. Both the head (`fit-head`, defaults) and the default fine-tune from it are
scored on that test split, which neither has seen.

    .venv/bin/python benchmarks/finetune_small.py                       # 20 and 50 a class, seeds 0-2
    .venv/bin/python benchmarks/finetune_small.py --per-class 20 --seeds 0

The subsets are folders of symlinks to ../shared/data/flowers128 under --work (default: a folder
in the system's temporary directory, kept, so that a second run reuses its caches).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import featx

FLOWERS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flowers128"


def subset(root: Path, per_class: int, seed: int) -> Path:
    """train/ with ``per_class`` images of each class drawn with ``seed``, test/ with the rest."""
    folder = root / f"flowers128-{per_class}-seed{seed}"
    rng = np.random.default_rng(seed)
    for cls in sorted(p.name for p in FLOWERS.iterdir() if p.is_dir()):
        images = sorted((FLOWERS / cls).iterdir())
        order = rng.permutation(len(images))
        for split, picked in (("train", order[:per_class]), ("test", order[per_class:])):
            target = folder / split / cls
            target.mkdir(parents=True, exist_ok=True)
            for i in picked:
                link = target / images[i].name
                if not link.is_symlink():
                    link.symlink_to(images[i])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "featx-finetune-small")
    args = parser.parse_args()
    quiet = featx.Runtime(progress=False)
    print("kept: what the fine-tune's bundle holds; its test figure is the kept model's, and "
          "'fine-tuned test' is the fine-tuned weights' whether kept or not")
    print(f"{'per class':>9s} {'seed':>4s} {'val n':>5s} {'head val':>8s} {'tuned val':>9s} "
          f"{'kept':>10s} {'test n':>6s} {'head test':>9s} {'kept test':>9s} {'fine-tuned test':>15s} "
          f"{'seconds':>7s}")
    for per_class in args.per_class:
        for seed in args.seeds:
            data = subset(args.work, per_class, seed)
            cache = featx.extract(data, runtime=quiet).path
            head = featx.fit_head(cache)
            t0 = time.perf_counter()
            tuned = featx.finetune(data, head.bundle, out=Path(f"{head.bundle}.finetuned-{time.time_ns()}"),
                                   runtime=quiet)
            seconds = time.perf_counter() - t0
            verdict = tuned.verdict
            print(f"{per_class:9d} {seed:4d} {verdict.n:5d} {verdict.before:8.4f} "
                  f"{verdict.after:9.4f} {verdict.kept:>10s} {head.metrics['test']['n']:6d} "
                  f"{head.metrics['test']['accuracy']:9.4f} {tuned.metrics['test']['accuracy']:9.4f} "
                  f"{tuned.finetuned_test['accuracy']:15.4f} {seconds:7.0f}", flush=True)


if __name__ == "__main__":
    main()
