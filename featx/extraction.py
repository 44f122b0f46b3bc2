"""Stage one: run the frozen backbone over an image folder once and stream features to HDF5.

``run_batches`` is the reader → model loop shared by extraction and scoring: DataLoader workers
decode and crop, the main process normalises and runs the model, and the caller consumes each
batch of features as it comes (writing it to HDF5, or scoring it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache as cache_mod
from .backbones import DEFAULT_BACKBONE, FeatureExtractor, check_pool, get_backbone, load_backbone
from .data import Dataset, ImageReader, collate, scan
from .errors import ConfigError

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
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported()
                          else torch.float16)


def default_workers() -> int:
    return min(os.cpu_count() or 1, 16)


@dataclass
class BatchOutput:
    indices: list[int]        # into the dataset's samples
    features: np.ndarray      # float32, one row per index
    failed: list[tuple[int, str]]


def run_batches(model: FeatureExtractor, dataset: Dataset, device: torch.device,
                batch_size: int = 32, workers: int | None = None, progress: bool = True,
                desc: str = "extract") -> Iterator[BatchOutput]:
    """Features of every readable image in ``dataset``, in order, one batch at a time."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    workers = default_workers() if workers is None else workers
    cuda = device.type == "cuda"
    reader = ImageReader(dataset.root, [s.path for s in dataset.samples], model.preprocessing.crop)
    loader = torch.utils.data.DataLoader(
        reader, batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=cuda,
        prefetch_factor=4 if workers else None)
    model = model.to(device, memory_format=torch.channels_last)
    autocast = autocast_for(device)
    bar = tqdm(total=len(reader), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    skipped = 0
    with bar, torch.inference_mode(), autocast:
        for batch in loader:
            features = np.empty((0, model.feature_dim), np.float32)
            if batch.images is not None:
                x = batch.images.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last)
                features = model(x).float().cpu().numpy()
            skipped += len(batch.failed)
            bar.update(len(batch.indices) + len(batch.failed))
            if batch.failed:
                bar.set_postfix(skipped=skipped)
            yield BatchOutput(batch.indices, features, batch.failed)


@dataclass
class ExtractResult:
    path: Path
    n_images: int
    n_failed: int
    seconds: float
    up_to_date: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.n_images + self.n_failed) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        if self.up_to_date:
            return f"up to date: {self.path} ({self.n_images} images, {self.n_failed} skipped)"
        return (f"extracted {self.n_images} images ({self.n_failed} skipped) in {self.seconds:.1f} s, "
                f"{self.images_per_second:.1f} img/s -> {self.path}")


def extract(data: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
            weights: str | os.PathLike | None = None, pool: str = "avg",
            out: str | os.PathLike | None = None, dtype: str = "float32", device: str = "auto",
            batch_size: int = 32, workers: int | None = None, progress: bool = True,
            force: bool = False) -> ExtractResult:
    """Extract features of every image under ``data`` into one HDF5 cache, and return where.

    ``out`` is a file path, or a folder for the default name (default: ``cache/``). Nothing is
    done if that file already holds these features for these exact files, unless ``force``.
    """
    if dtype not in cache_mod.DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}: choose one of {', '.join(cache_mod.DTYPES)}")
    # Settings are checked before a possibly long scan of the data, so a typo fails at once.
    check_pool(get_backbone(backbone), pool)
    dev = resolve_device(device)
    dataset = scan(data)
    model = load_backbone(backbone, weights, pool)
    identity = model.identity()
    path = Path(out) if out is not None and Path(out).suffix in (".h5", ".hdf5") else \
        cache_mod.default_path(dataset.root, identity, dtype, out or "cache")

    attrs = None if force else cache_mod.read_attrs(path)
    if attrs is not None and attrs.get("config_key") == cache_mod.config_key(identity, dtype) \
            and attrs.get("data_fingerprint") == dataset.fingerprint():
        return ExtractResult(path, int(attrs["n_images"]), int(attrs["n_failed"]), 0.0,
                             up_to_date=True)

    log.info("%s: %d images, %d classes, splits %s", dataset.root, len(dataset.samples),
             len(dataset.classes), dataset.split_counts())
    start = time.perf_counter()
    batches = run_batches(model, dataset, dev, batch_size, workers, progress,
                          desc=f"extract {backbone}")
    writer = cache_mod.CacheWriter(path, dataset, identity, dtype)
    failed: list[tuple[str, str]] = []
    try:
        for out_batch in batches:
            writer.write([dataset.samples[i] for i in out_batch.indices], out_batch.features)
            if out_batch.failed:
                writer.fail([dataset.samples[i] for i, _ in out_batch.failed],
                            [err for _, err in out_batch.failed])
                failed += [(dataset.samples[i].path.as_posix(), err) for i, err in out_batch.failed]
        seconds = time.perf_counter() - start
        path = writer.commit(seconds=seconds, device=str(dev))
    except BaseException:
        log.warning("stopped: the features extracted so far are kept in %s", writer.partial)
        raise
    finally:
        writer.close()
    n_failed = len(failed)
    return ExtractResult(path, len(dataset.samples) - n_failed, n_failed, seconds, failed=failed)
