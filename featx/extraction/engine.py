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
from .execution import cpu, exported
from .execution.prepare import Runner


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs, every ``"auto"`` of ``Runtime`` resolved: the torch
    ``device``, the features' precision ``dtype`` (``identity.DTYPES``) and why that one
    (``why_dtype``), images per forward pass ``batch_size``, where JPEGs are decoded (``decode``:
    cpu or device), how the frozen base runs (``execution``), decoding processes (``workers``:
    None, one per core) and ``progress``."""

    device: torch.device
    dtype: str
    batch_size: int
    decode: str
    execution: str
    workers: int | None
    progress: bool
    why_dtype: str = ""  # why ``dtype`` is this one, in a few words (``precision``)
    quantized: Path | None = None  # for int8, the graph that runs (``extraction.int8``)

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


ON_GPU = "the GPU's fast mixed precision"  # why a GPU's default is its own


def gpu_dtype(device: torch.device) -> str:
    """A GPU's fast mixed precision: bfloat16 where it computes that natively (compute capability
    8+; emulated, as torch.cuda.is_bf16_supported() would accept, it is slower than float16),
    else float16."""
    return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"


def precision(device: torch.device, execution: str, dtype: str | None = None, why: str = "as asked"
              ) -> tuple[str, str]:
    """The features' precision (``identity.DTYPES``) for ``execution`` on ``device``, and why, in
    a few words. None asks for the fastest that gives the same probe: on a GPU its mixed
    precision; on a CPU that multiplies bfloat16 natively (AVX-512 BF16, AMX), bfloat16 on
    OpenVINO, which gave fit-head's held-out figures of float32 within an image or three on both
    dev sets (docs, Speed) at up to twice the rate; float32 elsewhere. ``why``: that of a
    ``dtype`` given."""
    if dtype is not None:
        return dtype, why
    if device.type == "cuda":
        return gpu_dtype(device), ON_GPU
    if not cpu.has_native_bf16():
        return "float32", "this CPU has no native bfloat16"
    if execution not in ("auto", "openvino"):
        return "float32", (f"this CPU computes bfloat16 natively, but `execution` {execution} "
                           f"runs float32 only: leave out `execution` for bfloat16")
    if "openvino" not in exported.installed():
        return "float32", ("this CPU computes bfloat16 natively, but OpenVINO, which runs it, is "
                           "not installed: pip install openvino")
    return "bfloat16", "this CPU computes it natively, on OpenVINO"


def autocast_for(device: torch.device, dtype: str | None = None) -> contextlib.AbstractContextManager:
    """Torch's precision for features of ``dtype`` on ``device`` (None: ``gpu_dtype`` on a GPU, as
    fine-tuning trains). On a GPU, bfloat16 and float16 are autocast, and float32 is float32
    throughout: no TF32, whose 10-bit products would move features by ~1e-3, in convolutions
    either. A CPU computes in float32 (its bfloat16 runs on OpenVINO, ``extraction.execution``)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = dtype or gpu_dtype(device)
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


def placement_on(device: torch.device, runtime: Runtime, dtype: str | None = None,
                 why: str = "as asked") -> Placement:
    """``runtime`` resolved for ``device``; ``dtype`` (``why`` that one) None: the fastest
    precision that gives the same features (``precision``)."""
    # A GPU needs large batches to be kept busy; on a CPU, 32 is as fast as any larger size and
    # keeps the memory of a batch in flight small.
    batch_size = runtime.batch_size or (256 if device.type == "cuda" else 32)
    decode = runtime.decode if runtime.decode != "auto" else "device" if device.type == "cuda" else "cpu"
    dtype, why = precision(device, runtime.execution, dtype, why)
    placement = Placement(device, dtype, batch_size, decode, runtime.execution, runtime.workers,
                          runtime.progress, why)
    exported.check(placement.execution, placement.dtype, device.type)
    return placement


def reader(model: FeatureExtractor, root: Path, paths: list[Path], on_device: bool
           ) -> tuple[Reader, Callable[[list[Item]], ReadBatch]]:
    """The files ``paths`` under ``root`` as ``model`` reads them, and how a batch of them is
    collated: decoded and cropped, or (``on_device``) left encoded for the device to decode."""
    if on_device:
        return RawReader(root, paths, model.preprocessing.crop), collate_encoded
    pre = model.preprocessing
    return ImageReader(root, paths, pre.crop, shorter=pre.resize_size), collate


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
