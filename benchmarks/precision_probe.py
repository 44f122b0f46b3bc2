"""What each precision does to extraction's speed and to the logistic probe: each dev set
extracted in float32, bfloat16 and int8 (those this CPU runs), and fit-head's searched logistic
on each, its own held-out val line.

    .venv/bin/python benchmarks/precision_probe.py        # Lite0 on ../shared/data's two sets

One run, one process after another on the same images, so the rates compare; a precision this
CPU cannot run is said in one line and skipped.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import featx
from featx.extraction.execution import cpu

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PRECISIONS = ("float32", "bfloat16", "int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--data", nargs="+", type=Path, default=[SHARED / "flowers128", SHARED / "hymenoptera"])
    args = p.parse_args()
    default = featx.place(featx.Runtime(device="cpu")).placement
    print(f"precision probe: {args.backbone}; CPU {cpu.describe()}; the default here: "
          f"{default.dtype} ({default.why_dtype})")
    runtime = featx.Runtime(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            caches = {}
            for dtype in PRECISIONS:
                try:
                    r = featx.extract(data, args.backbone, out=Path(tmp) / f"{data.name}-{dtype}.h5",
                                      dtype=dtype, runtime=runtime)
                except featx.ConfigError as e:
                    print(f"{data.name} {dtype}: skipped: {e}")
                    continue
                caches[dtype] = r.path
                fc = featx.open_cache(r.path)
                ref = featx.open_cache(caches["float32"])
                assert fc.paths == ref.paths
                diff = np.abs(fc.features - ref.features).max() / np.abs(ref.features).max()
                val = featx.fit_head(r.path, out=Path(tmp) / f"{data.name}-{dtype}-head").metrics["val"]
                print(f"{data.name} {dtype}: extracted at {r.images_per_second:.1f} img/s on "
                      f"{r.execution}; logistic probe val accuracy {val['accuracy']:.4f}, loss "
                      f"{val['loss']:.4f} ({val['n']} images: one is {1 / val['n']:.4f}); features "
                      f"{diff:.1e} from float32's (relative to the largest)", flush=True)


if __name__ == "__main__":
    main()
