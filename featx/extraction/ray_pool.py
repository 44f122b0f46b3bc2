"""Stage one on a Ray cluster (``--engine ray``): the file list as a Ray dataset in blocks, a pool
of actors that each hold the frozen base once and read, decode and embed a block at a time, and
the driver writing what comes back into the same shards and cache the local engine writes.

Why the driver writes: a cache has one writer (its lock), and features are small beside images
(Lite0's 1,280 floats are 5 KB an image), so they travel back through Ray's object store while
the images never leave the nodes that read them. Every result is a shard on disk within a second
of reaching the driver (``cache.partial``), so a killed driver loses only the blocks in flight,
and a lost worker is restarted by Ray, which gives its blocks to the pool again. The rows come
back in any order; the cache is written in the dataset's order, so it equals the local engine's.

What this needs of a cluster: featx installed on every node, and the images at the same path on
every node (a shared or mounted file system).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones.extractor import FeatureExtractor
from ..data.folders import Dataset
from ..errors import ConfigError, first_line
from ..runtime import BATCHES_PER_BLOCK, CPUS_PER_WORKER, GPU_READERS, RayEngine, Runtime
from .engine import (
    ON_GPU,
    BatchOutput,
    Placement,
    counted,
    embed,
    gpu_dtype,
    lowest_priority,
    placement_on,
    reader,
)
from .execution.prepare import prepare

log = logging.getLogger(__name__)

INSTALL = "pip install 'featx[ray]'"
# How long a cluster's address may take to answer before it is taken as wrong.
CONNECT_SECONDS = 10


def import_ray():
    """Ray, or the one line that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(f"`engine` ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _check_reachable(address: str | None) -> None:
    """Refuse at once a cluster address nothing answers at: Ray itself waits minutes for it."""
    address = address or os.environ.get("RAY_ADDRESS")
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # none, "auto", "local": Ray finds or starts the cluster
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): check "
                          f"`address` (or RAY_ADDRESS), and that `ray start --head` runs there") from None


def _connect(address: str | None):
    ray = import_ray()
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            # Ray's own notices (its start-up, its token, its executor's plan) would bury featx's
            # one progress line; errors still come through, and so do the actors' warnings.
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'} "
                              f"({first_line(e)}): check `address`, or leave it out to run Ray on "
                              f"this machine") from e
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # featx shows one bar, with the rate, as locally
    context.print_on_execution_start = False
    return ray


@dataclass(frozen=True)
class RayPool:
    """Where a Ray run computes features: ``workers`` actors of ``cpus`` CPUs and ``gpus`` GPUs
    each, placed as ``placement`` says (its device is theirs, cuda or cpu)."""

    engine: RayEngine
    placement: Placement
    workers: int
    cpus: float
    gpus: float

    def describe(self, actors: int | None = None) -> str:
        """``actors`` (default ``workers``) as the progress bar and the log name them."""
        actors = actors or self.workers
        each = f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        return f"ray, {actors} actor{'s' if actors > 1 else ''} of {each}"

    def batches(self, model: FeatureExtractor, dataset: Dataset, desc: str = "extract"
                ) -> Iterator[BatchOutput]:
        """Features of every readable image in ``dataset``, a batch at a time in the order the
        actors finish them, as ``LocalEngine.batches`` gives them locally."""
        ray = import_ray()
        paths = [s.path.as_posix() for s in dataset.samples]
        block = self.engine.block_size or BATCHES_PER_BLOCK * self.placement.batch_size
        n_blocks = math.ceil(len(paths) / block)
        actors = min(self.workers, n_blocks)  # an actor with no block to take would only start
        blocks = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)],
                                     override_num_blocks=n_blocks)
        embedded = blocks.map_batches(
            Embedder, batch_size=block, batch_format="numpy", num_cpus=self.cpus, num_gpus=self.gpus,
            compute=ray.data.ActorPoolStrategy(
                size=actors, max_tasks_in_flight_per_actor=self.engine.blocks_in_flight),
            fn_constructor_kwargs=dict(model=model, root=str(dataset.root.resolve()),
                                       placement=self.placement, threads=max(1, int(self.cpus))))
        results = (_batch_output(out, model.feature_dim)
                   for out in embedded.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            yield from counted(results, len(paths), f"{desc} ({self.describe(actors)})",
                               self.placement.progress)
        except ray.exceptions.RayError as e:
            raise ConfigError(f"the Ray run failed: {first_line(e)}") from e


def _batch_output(out: dict[str, np.ndarray], dim: int) -> BatchOutput:
    ok = out["error"] == ""
    return BatchOutput(indices=out["index"][ok].tolist(),
                       features=np.asarray(out["features"][ok], np.float32).reshape(-1, dim),
                       digests=out["digest"][ok].tolist(),
                       failed=list(zip(out["index"][~ok].tolist(), out["error"][~ok].tolist(), strict=True)),
                       execution=str(out["execution"][0]) if len(ok) else "")


class Embedder:
    """A Ray actor: the frozen base, run as ``placement.execution`` says on this actor's device
    (``threads`` of its own on a CPU), and reading threads that read and decode the next batch
    while the model runs this one.

    The readers run at the lowest priority, as the local engine's decoding workers do, so that on
    a CPU they fill the gaps the model's threads leave rather than pre-empt them; beside a GPU
    they read in parallel, as files on shared storage come at the pace of its latency.
    """

    def __init__(self, model: FeatureExtractor, root: str, placement: Placement, threads: int):
        on_cpu = placement.device.type == "cpu"
        if on_cpu:
            torch.set_num_threads(threads)
        self.model, self.root, self.placement = model, Path(root), placement
        self.batch_size = placement.batch_size
        self.runner = prepare(model, placement.execution, placement.device, self.batch_size, placement.dtype)
        # Beside a GPU, which decodes, reading is mostly waiting for storage: more threads than
        # CPUs keep more files coming.
        readers = threads if on_cpu else max(GPU_READERS, threads)
        self.reading = ThreadPoolExecutor(readers, thread_name_prefix="featx-reader",
                                          initializer=lowest_priority)

    def __call__(self, block: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        files, collate = reader(self.model, self.root, [Path(p) for p in block["path"]],
                                self.placement.decode == "device")

        def read_ahead(start: int) -> list[Future]:
            return [self.reading.submit(files.__getitem__, i)
                    for i in range(start, min(start + self.batch_size, len(files)))]

        pending = read_ahead(0)
        for start in range(0, len(files), self.batch_size):
            batch = collate([f.result() for f in pending])
            pending = read_ahead(start + self.batch_size)
            with torch.inference_mode(), self.placement.autocast():
                out = embed(batch, self.model, self.runner, self.placement.device)
            yield _columns(out, block["index"], self.model.feature_dim)


def _columns(out: BatchOutput, index: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """``out`` as the columns of a Ray batch, a row per file: a file that could not be read has
    zeros for features and its reason in ``error``."""
    n_ok, n_failed = len(out.indices), len(out.failed)
    return {"index": index[np.array([*out.indices, *(i for i, _ in out.failed)], np.int64)],
            "features": np.concatenate([out.features, np.zeros((n_failed, dim), np.float32)]),
            "digest": np.array([*out.digests, *[""] * n_failed], object),
            "error": np.array([*[""] * n_ok, *(e for _, e in out.failed)], object),
            "execution": np.array([out.execution] * (n_ok + n_failed), object)}


def start(engine: RayEngine, runtime: Runtime, dtype: str | None = None, why: str = "as asked"
          ) -> RayPool:
    """Connect to the cluster and size the pool of actors for it, or say in one line why not."""
    if runtime.workers == 0:
        raise ConfigError("`workers` 0: the Ray engine needs at least one actor (leave `workers` "
                          "out for as many as the cluster has room for)")
    ray = _connect(engine.address)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has_gpus = any(n.get("GPU", 0) for n in nodes)
    if runtime.device.startswith("cuda") and not has_gpus:
        raise ConfigError(f"`device` {runtime.device} asked for, but the Ray cluster has no GPU: "
                          f"use `device` cpu")
    gpus = engine.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if has_gpus and runtime.device != "cpu" else 0.0
    cpus = engine.cpus_per_worker or (1.0 if gpus else _cpus(nodes, runtime.workers))
    room = sum(min(int(n.get("CPU", 0) // cpus), int(n.get("GPU", 0) // gpus) if gpus else math.inf)
               for n in nodes)
    workers = runtime.workers or room
    if not 0 < workers <= room:
        raise ConfigError(f"the Ray cluster has room for {room} actor(s) of {cpus:g} CPU and {gpus:g} "
                          f"GPU now, not {workers}: lower `workers`, `cpus_per_worker` or "
                          f"`gpus_per_worker`, or add nodes")
    device = torch.device("cuda" if gpus else "cpu")
    if dtype is None and gpus:  # the precision of the GPU the actors will have, which this machine may lack
        dtype, why = ray.get(ray.remote(num_gpus=gpus, num_cpus=0)(_gpu_dtype).remote()), ON_GPU
    placement = placement_on(device, runtime, dtype, why)
    pool = RayPool(engine, placement, workers, cpus, gpus)
    log.info("%s (the cluster: %d node(s), %g CPUs, %g GPUs)", pool.describe(), len(nodes),
             sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes))
    return pool


def _cpus(nodes: list[dict], workers: int | None) -> float:
    """CPUs of each CPU actor when none are asked for: ``CPUS_PER_WORKER``, as many as the largest
    node has if fewer, and for ``workers`` actors no more than the cluster's CPUs shared out."""
    cpus = min(CPUS_PER_WORKER, max(n.get("CPU", 0) for n in nodes))
    if workers:
        cpus = min(cpus, sum(n.get("CPU", 0) for n in nodes) // workers)
    return max(1.0, cpus)


def _gpu_dtype() -> str:
    # On a GPU worker: the precision its GPU computes fast, as a local run there would choose.
    return gpu_dtype(torch.device("cuda"))
