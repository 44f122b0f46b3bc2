"""What the probe search gains: each head on each dev set, its default settings against the
setting the search chooses, both measured on the same validation images (the search's figure is
the chosen setting fitted on train alone, as fit-head reports it).

    .venv/bin/python benchmarks/probe_search.py                 # Lite0 on ../shared/data's two sets
    .venv/bin/python benchmarks/probe_search.py --heads logistic

The features are extracted once per set (cached under cache/, as `featx extract` does).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import featx

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["hymenoptera", "flowers128"])
    parser.add_argument("--heads", nargs="+", default=list(featx.HEADS))
    args = parser.parse_args()
    print(f"{'set':12s} {'head':9s} {'default':>8s} {'searched':>8s} {'gain':>6s} {'fits':>4s} "
          f"{'seconds':>7s}  chosen")
    for name in args.sets:
        cache = featx.extract(SHARED / name, runtime=featx.Runtime(progress=False)).path
        for head in args.heads:
            with tempfile.TemporaryDirectory() as tmp:
                plain = featx.fit_head(cache, model=head, search=False, out=Path(tmp) / "plain")
                t0 = time.perf_counter()
                found = featx.fit_head(cache, model=head, search=True, out=Path(tmp) / "searched")
                seconds = time.perf_counter() - t0
            a, b = plain.metrics["val"]["accuracy"], found.metrics["val"]["accuracy"]
            chosen = ", ".join(f"{k}={v:g}" for k, v in found.search.best.params.items())
            print(f"{name:12s} {head:9s} {a:8.4f} {b:8.4f} {100 * (b - a):+6.2f} "
                  f"{len(found.search.trials):4d} {seconds:7.1f}  {chosen}", flush=True)


if __name__ == "__main__":
    main()
