"""What the Ray engine costs and gives on one machine: extraction of the same folder by the local
engine and by Ray with 1 and 2 actors, in one run, with rates, start-up and peak memory.

    .venv/bin/python benchmarks/ray_engine.py                          # flowers128, this machine
    .venv/bin/python benchmarks/ray_engine.py DATA --actors 1 2 4

Each run extracts the whole folder again (``force``) into a temporary file. "first row" is the
seconds from the call to the first features reaching the cache's shards: for Ray, the actors
starting (a Python process each that imports torch and featx, receives the base and makes its
runtime session). "steady" is the rate after that. Memory is the peak resident set of this
process and every process below it (for Ray: its head, raylet and actors), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import featx
from featx.cache import partial

FLOWERS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flowers128"


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and every process below it (Linux: read from /proc)."""
    parent, rss = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after the name, which may hold spaces
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):  # gone between listing and reading
            continue
    below, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        for child, up in parent.items():
            if up == pid and child not in below:
                below.add(child)
                todo.append(child)
    return sum(rss.get(pid, 0) for pid in below)


class PeakMemory:
    """The largest ``tree_rss`` of this process while the block runs, sampled every 0.2 s."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss(os.getpid()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def first_row_clock() -> list[tuple[float, int]]:
    """(time, rows) of each batch of rows reaching the shards, as ``Partial.add`` is called."""
    times: list[tuple[float, int]] = []
    add = partial.Partial.add

    def timed(self, samples, *args):
        times.append((time.perf_counter(), len(samples)))
        return add(self, samples, *args)

    partial.Partial.add = timed
    return times


def run(name: str, data: Path, tmp: Path, runtime: featx.Runtime, engine: str,
        times: list[tuple[float, int]]) -> float:
    """Extract ``data`` again with ``engine``; print and return its rate."""
    times.clear()
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        r = featx.extract(data, out=tmp / f"{name}.h5", force=True, runtime=runtime, engine=engine)
        seconds = time.perf_counter() - t0
    (first, rows), last = times[0], times[-1][0]
    n = r.n_images + r.n_failed
    steady = (n - rows) / (last - first) if last > first else float("nan")
    print(f"{name:>14s} {n:6d} {seconds:7.1f} {n / seconds:6.1f} {first - t0:9.1f} {steady:12.1f} "
          f"{memory.peak / 2**30:9.2f} G", flush=True)
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=FLOWERS)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import ray

    quiet = dict(progress=False)
    times = first_row_clock()
    print(f"{'engine':>14s} {'images':>6s} {'seconds':>7s} {'img/s':>6s} {'first row':>9s} "
          f"{'steady img/s':>12s} {'peak memory':>11s}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        rates["local"] = run("local", args.data, Path(tmp), featx.Runtime(**quiet), "local", times)
        alone = tree_rss(os.getpid())
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR")
        started = time.perf_counter() - t0
        with PeakMemory() as memory:
            time.sleep(2)
        print(f"ray.init on this machine: {started:.1f} s, {ray.cluster_resources().get('CPU', 0):g} "
              f"CPUs; Ray's processes at rest: {(memory.peak - alone) / 2**30:.2f} G")
        for n in args.actors:
            name = f"ray, {n} actor{'s' if n > 1 else ''}"
            rates[name] = run(name, args.data, Path(tmp), featx.Runtime(workers=n, **quiet), "ray", times)
    print("rate against the local engine, same run: " +
          ", ".join(f"{name} {rate / rates['local']:.2f}" for name, rate in rates.items() if name != "local"))


if __name__ == "__main__":
    main()
