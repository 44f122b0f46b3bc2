"""Stage one: run the frozen backbone over an image folder once and keep its features in HDF5.

``run_batches`` is the reader → model loop: DataLoader workers decode and crop, the main process
normalises and runs the model, and the caller consumes each batch of features as it comes.
``update_cache`` is the runner shared by extraction and scoring: under the cache's lock it reuses
every feature still valid (``reuse``), streams the rest into durable shards (``partial``), and
writes the cache whole (``cache``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache as cache_mod
from . import execution as execution_mod
from . import reuse
from .backbones import DEFAULT_BACKBONE, FeatureExtractor, check_pool, get_backbone, load_backbone
from .data import Dataset, ImageReader, collate, scan
from .decoding import RawReader, collate_encoded, decode_batch
from .errors import CacheError, ConfigError
from .lock import locked
from .partial import Partial

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA GPU: use --device cpu")
    return torch.device(device)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where the GPU has it, else float16); none on the CPU,
    where float32 is both exact and the fastest path for these models."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    # bfloat16 only where the GPU computes it natively (compute capability 8+); emulated, as
    # torch.cuda.is_bf16_supported() would accept, it is slower than float16.
    native = torch.cuda.get_device_capability(device)[0] >= 8
    return torch.autocast("cuda", dtype=torch.bfloat16 if native else torch.float16)


DECODES = ("auto", "cpu", "device")


def resolve_decode(decode: str, device: torch.device) -> str:
    """``cpu`` or ``device``: ``auto`` decodes on the device where that is a GPU."""
    if decode not in DECODES:
        raise ConfigError(f"unknown --decode {decode!r}: choose one of {', '.join(DECODES)}")
    if decode == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return decode


def default_batch_size(device: torch.device) -> int:
    # A GPU needs large batches to be kept busy; on a CPU, 32 is as fast as any larger size and
    # keeps the memory of a batch in flight small.
    return 256 if device.type == "cuda" else 32


def default_workers() -> int:
    return min(os.cpu_count() or 1, 16)


def _lower_priority(_worker_id: int) -> None:
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


def run_batches(model: FeatureExtractor, dataset: Dataset, device: torch.device,
                batch_size: int | None = None, workers: int | None = None, progress: bool = True,
                desc: str = "extract", execution: str = "eager", decode: str = "auto"
                ) -> Iterator[BatchOutput]:
    """Features of every readable image in ``dataset``, in order, one batch at a time.

    ``execution`` is how the model runs (``execution.EXECUTIONS``); ``model`` itself is not
    changed, so a model being fine-tuned keeps its own BatchNorm layers. ``decode``: where JPEGs
    are decoded, ``cpu`` (PIL, in the workers) or ``device`` (``featx.decoding``, beside the
    model); ``auto`` is ``device`` on CUDA, where CPU decoding would be the bottleneck.
    """
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    # More workers than batches would only start processes that get nothing to do.
    workers = min(default_workers() if workers is None else workers,
                  math.ceil(len(dataset.samples) / batch_size))
    cuda = device.type == "cuda"
    on_device = resolve_decode(decode, device) == "device"
    paths = [s.path for s in dataset.samples]
    reader = (RawReader if on_device else ImageReader)(dataset.root, paths, model.preprocessing.crop)
    loader = torch.utils.data.DataLoader(
        reader, batch_size=batch_size, num_workers=workers, pin_memory=cuda,
        collate_fn=collate_encoded if on_device else collate,
        prefetch_factor=4 if workers else None, worker_init_fn=_lower_priority)
    batches = iter(loader)  # the workers start decoding while the model is being prepared
    runner = execution_mod.prepare(model, execution, device, batch_size)
    autocast = autocast_for(device)
    bar = tqdm(total=len(reader), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    skipped = 0
    with bar, torch.inference_mode(), autocast:
        for batch in batches:
            if on_device:
                batch = decode_batch(batch, model.preprocessing, device)
            features = np.empty((0, model.feature_dim), np.float32)
            if batch.images is not None:
                x = batch.images.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last)
                features = runner(x).float().cpu().numpy()
            skipped += len(batch.failed)
            bar.update(len(batch.indices) + len(batch.failed))
            if batch.failed:
                bar.set_postfix(skipped=skipped)
            yield BatchOutput(batch.indices, features, batch.digests, batch.failed)


@dataclass
class ExtractResult:
    path: Path
    n_images: int
    n_failed: int
    seconds: float
    up_to_date: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)
    n_reused: int = 0  # images whose features came from the cache or an interrupted run

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
        rate = f", {self.images_per_second:.1f} img/s" if self.n_extracted else ""
        return (f"extracted {self.n_extracted} images{reused} ({self.n_failed} skipped) in "
                f"{self.seconds:.1f} s{rate} -> {self.path}")


def extract(data: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
            weights: str | os.PathLike | None = None, pool: str = "avg",
            out: str | os.PathLike | None = None, dtype: str = "float32", device: str = "auto",
            batch_size: int | None = None, workers: int | None = None, progress: bool = True,
            force: bool = False, execution: str = execution_mod.DEFAULT_EXECUTION,
            decode: str = "auto") -> ExtractResult:
    """Extract features of every image under ``data`` into one HDF5 cache, and return where.

    ``out`` is a file path, or a folder for the default name (default: ``cache/``). Features
    already in that file, or kept by an interrupted run, are reused for every file unchanged
    since; only new and changed images are extracted, unless ``force``. ``execution``: how the
    frozen base runs (see ``featx.execution``); ``decode``: where JPEGs are decoded (see
    ``run_batches``).
    """
    if dtype not in cache_mod.DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}: choose one of {', '.join(cache_mod.DTYPES)}")
    # Settings are checked before a possibly long scan of the data, so a typo fails at once.
    check_pool(get_backbone(backbone), pool)
    execution_mod.check_execution(execution)
    dev = resolve_device(device)
    resolve_decode(decode, dev)
    dataset = scan(data)
    model = load_backbone(backbone, weights, pool)
    path = Path(out) if out is not None and Path(out).suffix in (".h5", ".hdf5") else \
        cache_mod.default_path(dataset.root, model.identity(), dtype, out or "cache")
    log.info("%s: %d images, %d classes, splits %s", dataset.root, len(dataset.samples),
             len(dataset.classes), dataset.split_counts())
    return update_cache(path, dataset, model, dtype, dev, batch_size, workers, progress, force,
                        desc=f"extract {backbone}", execution=execution, decode=decode)


def update_cache(path: Path, dataset: Dataset, model: FeatureExtractor, dtype: str,
                 device: torch.device, batch_size: int | None = None, workers: int | None = None,
                 progress: bool = True, force: bool = False, desc: str = "extract",
                 execution: str = execution_mod.DEFAULT_EXECUTION, decode: str = "auto"
                 ) -> ExtractResult:
    """Make the cache at ``path`` hold ``model``'s features of every image in ``dataset``.

    Holds ``PATH.lock`` throughout; a second run on the same cache is refused with a
    ``CacheError``. Files that failed to read are tried again every time.
    """
    start = time.perf_counter()
    identity = model.identity()
    key = cache_mod.config_key(identity, dtype)
    with locked(path), contextlib.ExitStack() as stack:
        old = None if force else cache_mod.previous(path, identity, dtype)
        if old is not None:
            stack.callback(old.close)
        store = Partial(path, key, dtype, fresh=force)
        plan = reuse.plan(dataset, [s for s in (old, *store.shards) if s is not None])
        n_kept = sum(f.source is not old for f in plan.found.values())
        if n_kept:
            log.info("resuming: %d images were already extracted in %s", n_kept, store.dir)
        failed = _extract_into(store, model, dataset, plan.todo, device, batch_size, workers,
                               progress, desc, execution, decode)
        found = {**plan.found, **reuse.plan(dataset, store.written, plan.todo).found}
        contents = cache_mod.Contents.of(dataset, found, failed)
        result = ExtractResult(path, len(found), len(failed), 0.0, failed=list(contents.failed),
                               n_reused=len(plan.found))
        if old is not None and old.contents == contents:
            result.up_to_date = True
        else:
            try:
                cache_mod.write(path, contents, [found[i] for i in sorted(found)], identity, dtype,
                                tmp=store.dir / f"{path.name}.tmp", device=str(device),
                                execution=execution, decode=resolve_decode(decode, device),
                                seconds=time.perf_counter() - start, data_root=str(dataset.root.resolve()))
            except OSError as e:
                raise _write_error(e, store) from e
        store.remove()
    result.seconds = 0.0 if result.up_to_date else time.perf_counter() - start
    return result


def _write_error(e: OSError, store: Partial) -> CacheError:
    return CacheError(f"cannot write {e.filename or store.dir} ({e.strerror or e}): make room or fix "
                      f"the folder, then run the same command again; the {store.n_rows} images "
                      f"extracted so far are kept in {store.dir}")


def _extract_into(store: Partial, model: FeatureExtractor, dataset: Dataset, todo: list[int],
                  device: torch.device, batch_size: int | None, workers: int | None, progress: bool,
                  desc: str, execution: str, decode: str) -> dict[int, str]:
    """Run the samples ``todo`` through the model into ``store``; return {index: error} of those
    that could not be read."""
    failed: dict[int, str] = {}
    if not todo:
        return failed
    part = dataclasses.replace(dataset, samples=tuple(dataset.samples[i] for i in todo))
    try:
        for out in run_batches(model, part, device, batch_size, workers, progress, desc, execution,
                               decode):
            store.add([part.samples[j] for j in out.indices], out.digests, out.features)
            failed.update((todo[j], err) for j, err in out.failed)
        store.flush()
    except OSError as e:
        raise _write_error(e, store) from e
    except BaseException:
        store.flush()  # Ctrl-C keeps every batch already through the model
        log.warning("stopped: the %d images extracted so far are kept in %s; run the same command "
                    "again to go on", store.n_rows, store.dir)
        raise
    return failed
