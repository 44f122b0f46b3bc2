"""The extraction runner, shared by extraction, scoring and fine-tuning's validation: reader →
model → writer.

``run_batches`` is the reader → model loop: DataLoader workers decode and crop, the main process
normalises and runs the model, and the caller consumes each batch of features as it comes; it
owns the progress bar. ``update_cache`` adds the writer: under the cache's lock it reuses every
feature still valid (``cache.reuse``), streams the rest into durable shards (``cache.partial``),
and writes the cache whole (``cache.writer``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones.extractor import FeatureExtractor
from .cache import reuse
from .cache.format import Contents, data_id
from .cache.lock import forget_inherited, locked
from .cache.partial import Partial
from .cache.reader import previous
from .cache.writer import write
from .data.device_decode import RawReader, collate_encoded, decode_batch
from .data.folders import Dataset
from .data.readers import ImageReader, collate
from .errors import CacheError, first_line
from .execution.prepare import prepare
from .progress import progress_bar
from .runtime import Runtime, autocast_for, default_dtype

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


def loader(model: FeatureExtractor, dataset: Dataset, device: torch.device, runtime: Runtime,
           on_device: bool) -> torch.utils.data.DataLoader:
    """Batches of ``dataset``'s images, decoded and cropped for ``model`` by ``runtime``'s
    workers (``on_device``: left encoded, for the device to decode)."""
    batch_size = runtime.batch_size_on(device)
    workers = runtime.workers_for(math.ceil(len(dataset.samples) / batch_size))
    paths = [s.path for s in dataset.samples]
    reader = (RawReader if on_device else ImageReader)(dataset.root, paths, model.preprocessing.crop)
    return torch.utils.data.DataLoader(
        reader, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
        collate_fn=collate_encoded if on_device else collate,
        prefetch_factor=4 if workers else None, worker_init_fn=_start_worker)


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
    bar = progress_bar(len(decoding.dataset), desc, enabled=runtime.progress)
    skipped = 0
    with bar, torch.inference_mode(), autocast_for(device, dtype):
        for batch in batches:
            if on_device:
                batch = decode_batch(batch, model.preprocessing, device)
            features = np.empty((0, model.feature_dim), np.float32)
            if batch.images is not None:
                features = runner(batch.images.to(device, non_blocking=True)).float().cpu().numpy()
            skipped += len(batch.failed)
            bar.update(len(batch.indices) + len(batch.failed))
            if batch.failed:
                bar.set_postfix(skipped=skipped)
            yield BatchOutput(batch.indices, features, batch.digests, batch.failed, runner.execution)


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
                 force: bool = False, desc: str = "extract") -> ExtractResult:
    """Make the cache at ``path`` hold ``model``'s features of every image in ``dataset``.

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
        failed, execution = _extract_into(store, model, dataset, plan.todo, runtime, desc, dtype)
        found = {**plan.found, **reuse.plan(dataset, store.written, plan.todo).found}
        contents = Contents.of(dataset, found, failed)
        result = ExtractResult(path, len(found), len(failed), 0.0, failed=list(contents.failed),
                               n_reused=len(plan.found), execution=execution,
                               up_to_date=old is not None and old.contents == contents)
        if not result.up_to_date:
            device = runtime.torch_device()
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
                  runtime: Runtime, desc: str, dtype: str) -> tuple[dict[int, str], str]:
    """Run the samples ``todo`` through the model into ``store``; return {index: error} of those
    that could not be read, and the execution that ran ("" when none had to)."""
    failed: dict[int, str] = {}
    execution = ""
    if not todo:
        return failed, execution
    part = dataset.subset(todo)
    try:
        for out in run_batches(model, part, runtime, desc, dtype):
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
