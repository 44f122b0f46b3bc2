"""The extraction runner, shared by extraction, scoring and fine-tuning's validation: reader →
model → writer.

``run_batches`` is the reader → model loop: DataLoader workers decode and crop (``reader``), the
main process normalises and runs the model (``embed``), and the caller consumes each batch of
features as it comes; it owns the progress bar. (The Ray engine's actors, ``ray_engine``, run the
same ``reader`` and ``embed``.) ``update_cache`` adds the writer: under the cache's lock it reuses
every feature still valid (``cache.reuse``), streams the rest into durable shards
(``cache.partial``), and writes the cache whole (``cache.writer``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .backbones.extractor import FeatureExtractor
from .cache import reuse
from .cache.format import Contents, data_id
from .cache.lock import forget_inherited, locked
from .cache.partial import Partial
from .cache.reader import previous
from .cache.writer import write
from .data.device_decode import EncodedBatch, RawReader, collate_encoded, decode_batch
from .data.folders import Dataset
from .data.readers import ImageReader, Item, ReadBatch, Reader, collate
from .errors import CacheError, first_line
from .execution.prepare import Runner, prepare
from .progress import progress_bar
from .runtime import Runtime, autocast_for, default_dtype

if TYPE_CHECKING:
    from .ray_engine import RayPool

log = logging.getLogger(__name__)


def _start_worker(_worker_id: int) -> None:
    forget_inherited()
    # Decoding needs a small share of the CPU that the model's threads keep busy. At normal
    # priority a worker pre-empts one of them, and the rest wait for it at the next barrier; at
    # the lowest priority workers mostly run in the gaps and fill the prefetch queue. (SCHED_IDLE
    # measured no better here, and would all but stop decoding on a machine busy with other work.)
    os.nice(19)


@dataclass
class BatchOutput:
    indices: list[int]        # into the dataset's samples
    features: np.ndarray      # float32, one row per index
    digests: list[str]        # sha256 of each file, one per index
    failed: list[tuple[int, str]]
    execution: str            # what computed them (``execution.prepare.Runner.execution``)


def reader(model: FeatureExtractor, root: Path, paths: list[Path], on_device: bool
           ) -> tuple[Reader, Callable[[list[Item]], ReadBatch]]:
    """The files ``paths`` under ``root`` as ``model`` reads them, and how a batch of them is
    collated: decoded and cropped, or (``on_device``) left encoded for the device to decode."""
    if on_device:
        return RawReader(root, paths, model.preprocessing.crop), collate_encoded
    return ImageReader(root, paths, model.preprocessing.crop), collate


def embed(batch: ReadBatch, model: FeatureExtractor, runner: Runner, device: torch.device) -> BatchOutput:
    """One batch from ``reader`` through the model, decoded first if it came encoded; called
    under ``torch.inference_mode`` and ``autocast_for`` the features' precision."""
    if isinstance(batch, EncodedBatch):
        batch = decode_batch(batch, model.preprocessing, device)
    features = np.empty((0, model.feature_dim), np.float32)
    if batch.images is not None:
        features = runner(batch.images.to(device, non_blocking=True)).float().cpu().numpy()
    return BatchOutput(batch.indices, features, batch.digests, batch.failed, runner.execution)


def loader(model: FeatureExtractor, dataset: Dataset, device: torch.device, runtime: Runtime,
           on_device: bool) -> torch.utils.data.DataLoader:
    """Batches of ``dataset``'s images from ``reader``, read by ``runtime``'s workers."""
    batch_size = runtime.batch_size_on(device)
    workers = runtime.workers_for(math.ceil(len(dataset.samples) / batch_size))
    files, collate_fn = reader(model, dataset.root, [s.path for s in dataset.samples], on_device)
    return torch.utils.data.DataLoader(
        files, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
        collate_fn=collate_fn, prefetch_factor=4 if workers else None, worker_init_fn=_start_worker)


def run_batches(model: FeatureExtractor, dataset: Dataset, runtime: Runtime, desc: str = "extract",
                dtype: str | None = None) -> Iterator[BatchOutput]:
    """Features of every readable image in ``dataset``, in order, one batch at a time, computed
    to ``dtype``'s precision (``identity.DTYPES``; None: the device's default, as fine-tuning
    trains).

    ``runtime.execution`` is how the model runs (``featx.execution``); ``model`` itself is not
    changed, so a model being fine-tuned keeps its own BatchNorm layers. ``runtime.decode``: where
    JPEGs are decoded, ``cpu`` (PIL, in the workers) or ``device`` (``data.device_decode``, beside
    the model).
    """
    device = runtime.torch_device()
    dtype = dtype or default_dtype(device)
    on_device = runtime.decode_on(device) == "device"
    decoding = loader(model, dataset, device, runtime, on_device)
    batches = iter(decoding)  # the workers start decoding while the model is being prepared
    runner = prepare(model, runtime.execution, device, decoding.batch_size, dtype)

    def embedded() -> Iterator[BatchOutput]:
        with torch.inference_mode(), autocast_for(device, dtype):
            for batch in batches:
                yield embed(batch, model, runner, device)

    yield from counted(embedded(), len(decoding.dataset), desc, runtime.progress)


def counted(outputs: Iterable[BatchOutput], total: int, desc: str, enabled: bool) -> Iterator[BatchOutput]:
    """``outputs`` as they come, counted on a progress bar of ``total`` images (``enabled``),
    with the files skipped so far."""
    bar = progress_bar(total, desc, enabled=enabled)
    skipped = 0
    with bar:
        for out in outputs:
            skipped += len(out.failed)
            bar.update(len(out.indices) + len(out.failed))
            if out.failed:
                bar.set_postfix(skipped=skipped)
            yield out


@dataclass
class ExtractResult:
    path: Path
    n_images: int
    n_failed: int
    seconds: float
    up_to_date: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)
    n_reused: int = 0  # images whose features came from the cache or an interrupted run
    execution: str = ""  # what computed the features extracted this time (``featx.execution``)

    @property
    def n_extracted(self) -> int:
        return 0 if self.up_to_date else self.n_images - self.n_reused

    @property
    def images_per_second(self) -> float:
        return (self.n_extracted + self.n_failed) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        if self.up_to_date:
            return f"up to date: {self.path} ({self.n_images} images, {self.n_failed} skipped)"
        reused = f", reused {self.n_reused}" if self.n_reused else ""
        rate = (f", {self.images_per_second:.1f} img/s on {self.execution}" if self.n_extracted
                else "")
        return (f"extracted {self.n_extracted} images{reused} ({self.n_failed} skipped) in "
                f"{self.seconds:.1f} s{rate} -> {self.path}")


def update_cache(path: Path, dataset: Dataset, model: FeatureExtractor, dtype: str, runtime: Runtime,
                 force: bool = False, desc: str = "extract", pool: RayPool | None = None) -> ExtractResult:
    """Make the cache at ``path`` hold ``model``'s features of every image in ``dataset``,
    computed here by ``runtime``, or by ``pool``'s actors on a Ray cluster.

    Holds ``PATH.lock`` throughout; a second run on the same cache is refused with a
    ``CacheError``. Files that failed to read are tried again every time.
    """
    start = time.perf_counter()
    identity, data = model.identity(), data_id(dataset.root)
    with locked(path), contextlib.ExitStack() as stack:
        old = None if force else previous(path, identity, dtype, data)
        if old is not None:
            stack.callback(old.close)
        store = Partial(path, identity.key(dtype), dtype, fresh=force)
        plan = reuse.plan(dataset, [s for s in (old, *store.shards) if s is not None])
        n_kept = sum(f.source is not old for f in plan.found.values())
        if n_kept:
            log.info("resuming: %d images were already extracted in %s", n_kept, store.dir)
        batches = functools.partial(pool.batches, desc=desc, dtype=dtype) if pool else \
            functools.partial(run_batches, runtime=runtime, desc=desc, dtype=dtype)
        failed, execution = _extract_into(store, model, dataset, plan.todo, batches)
        found = {**plan.found, **reuse.plan(dataset, store.written, plan.todo).found}
        contents = Contents.of(dataset, found, failed)
        result = ExtractResult(path, len(found), len(failed), 0.0, failed=list(contents.failed),
                               n_reused=len(plan.found), execution=execution,
                               up_to_date=old is not None and old.contents == contents)
        if not result.up_to_date:
            device = pool.device if pool else runtime.torch_device()
            try:
                write(path, contents, [found[i] for i in sorted(found)], identity, dtype,
                      tmp=store.dir / f"{path.name}.tmp", device=str(device), execution=execution or "none",
                      decode=runtime.decode_on(device), seconds=time.perf_counter() - start,
                      data=dataset.root.resolve().name, data_id=data,
                      data_path=os.path.relpath(dataset.root.resolve(), path.resolve().parent))
            except (OSError, RuntimeError) as e:  # h5py reports some failed writes as RuntimeError
                raise _write_error(e, store) from e
        store.remove()
    result.seconds = 0.0 if result.up_to_date else time.perf_counter() - start
    return result


def _write_error(e: OSError | RuntimeError, store: Partial) -> CacheError:
    what = (e.strerror or e) if isinstance(e, OSError) else first_line(e)
    return CacheError(f"cannot write {getattr(e, 'filename', None) or store.dir} ({what}): make room or fix "
                      f"the folder, then run the same command again; the {store.n_rows} images "
                      f"extracted so far are kept in {store.dir}")


def _extract_into(store: Partial, model: FeatureExtractor, dataset: Dataset, todo: list[int],
                  batches: Callable[[FeatureExtractor, Dataset], Iterator[BatchOutput]]
                  ) -> tuple[dict[int, str], str]:
    """Run the samples ``todo`` through the model into ``store``, as ``batches`` computes them;
    return {index: error} of those that could not be read, and the execution that ran ("" when
    none had to)."""
    failed: dict[int, str] = {}
    execution = ""
    if not todo:
        return failed, execution
    part = dataset.subset(todo)
    try:
        for out in batches(model, part):
            store.add([part.samples[j] for j in out.indices], out.digests, out.features)
            failed.update((todo[j], err) for j, err in out.failed)
            execution = out.execution
        store.flush()
    except OSError as e:
        raise _write_error(e, store) from e
    except BaseException:
        store.flush()  # Ctrl-C keeps every batch already through the model
        log.warning("stopped: the %d images extracted so far are kept in %s; run the same command "
                    "again to go on", store.n_rows, store.dir)
        raise
    return failed, execution
