"""What every stage-one engine shares: where it runs (``Placement``, resolved once by
``placement.place``), the ``Engine`` protocol that the local loop (``local``) and the Ray pool
(``ray_pool``) both follow, the batch of features either hands back, and how one batch is read and
embedded, so that the two engines run the same code on each image."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..backbones.extractor import FeatureExtractor
from ..data.device_decode import EncodedBatch, RawReader, collate_encoded, decode_batch
from ..data.folders import Dataset
from ..data.readers import ImageReader, Item, ReadBatch, Reader, collate
from ..errors import ConfigError
from ..runtime import Runtime, default_workers
from ..util.progress import progress_bar
from .execution.exported import check
from .execution.prepare import Runner


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs, every ``"auto"`` of ``Runtime`` resolved: the torch
    ``device``, the features' precision ``dtype`` (``identity.DTYPES``), images per forward pass
    ``batch_size``, where JPEGs are decoded (``decode``: cpu or device), how the frozen base runs
    (``execution``), decoding processes (``workers``: None, one per core) and ``progress``."""

    device: torch.device
    dtype: str
    batch_size: int
    decode: str
    execution: str
    workers: int | None
    progress: bool

    def workers_for(self, n_batches: int) -> int:
        # More workers than batches would only start processes that get nothing to do.
        return min(default_workers() if self.workers is None else self.workers, n_batches)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.device, self.dtype)


@dataclass
class BatchOutput:
    indices: list[int]        # into the dataset's samples
    features: np.ndarray      # float32, one row per index
    digests: list[str]        # sha256 of each file, one per index
    failed: list[tuple[int, str]]
    execution: str            # what computed them (``execution.prepare.Runner.execution``)


class Engine(Protocol):
    """Computes features of a dataset's images where its ``placement`` says."""

    placement: Placement

    def batches(self, model: FeatureExtractor, dataset: Dataset, desc: str) -> Iterator[BatchOutput]:
        """Features of every readable image in ``dataset``, a batch at a time, counted on a
        progress bar named ``desc``."""
        ...


def default_dtype(device: torch.device) -> str:
    """The features' precision (``identity.DTYPES``) when none is asked for: float32 on a CPU;
    on a GPU its fast mixed precision, bfloat16 where it computes that natively (compute
    capability 8+; emulated, as torch.cuda.is_bf16_supported() would accept, it is slower than
    float16), else float16."""
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"


def autocast_for(device: torch.device, dtype: str | None = None) -> contextlib.AbstractContextManager:
    """Torch's precision for features of ``dtype`` on ``device`` (None: ``default_dtype``, as
    fine-tuning trains). On a GPU, bfloat16 and float16 are autocast, and float32 is float32
    throughout: no TF32, whose 10-bit products would move features by ~1e-3, in convolutions
    either. A CPU computes in float32 (its bfloat16 runs on OpenVINO, ``extraction.execution``)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = dtype or default_dtype(device)
    if dtype == "float32":
        cudnn = torch.backends.cudnn
        return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                           deterministic=cudnn.deterministic, allow_tf32=False)
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def device_of(runtime: Runtime) -> torch.device:
    """``runtime.device`` as a torch device: auto is CUDA where torch sees a GPU."""
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if runtime.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"`device` {runtime.device} asked for, but torch sees no CUDA GPU: use "
                          f"`device` cpu")
    return torch.device(runtime.device)


def placement_on(device: torch.device, runtime: Runtime, dtype: str | None = None) -> Placement:
    """``runtime`` resolved for ``device``; ``dtype`` None: the device's default precision."""
    # A GPU needs large batches to be kept busy; on a CPU, 32 is as fast as any larger size and
    # keeps the memory of a batch in flight small.
    batch_size = runtime.batch_size or (256 if device.type == "cuda" else 32)
    decode = runtime.decode if runtime.decode != "auto" else "device" if device.type == "cuda" else "cpu"
    placement = Placement(device, dtype or default_dtype(device), batch_size, decode, runtime.execution,
                          runtime.workers, runtime.progress)
    check(placement.execution, placement.dtype, device.type)
    return placement


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


def lowest_priority() -> None:
    """Run this process (or thread) in the gaps the model's threads leave: decoding needs a
    small share of the CPU they keep busy. At normal priority a reader pre-empts one of them,
    and the rest wait for it at the next barrier. (SCHED_IDLE measured no better here, and would
    all but stop decoding on a machine busy with other work.)"""
    with contextlib.suppress(OSError):  # where threads have no priority of their own, as they come
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
