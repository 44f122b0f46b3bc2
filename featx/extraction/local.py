"""The local engine: DataLoader workers decode and crop (``engine.reader``), this process
normalises and runs the model (``engine.embed``), and each batch of features is handed on as it
comes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..backbones.extractor import FeatureExtractor
from ..cache.lock import forget_inherited
from ..data.folders import Dataset
from ..util.processes import die_with_parent
from .engine import BatchOutput, Placement, counted, embed, lowest_priority, reader
from .execution.prepare import prepare


def start_worker(_worker_id: int = 0) -> None:
    """A decoding worker's start: it ends with its parent, holds none of its locks, and runs in
    the gaps the model's threads leave."""
    die_with_parent()
    forget_inherited()
    lowest_priority()


def loader(model: FeatureExtractor, dataset: Dataset, placement: Placement, on_device: bool
           ) -> torch.utils.data.DataLoader:
    """Batches of ``dataset``'s images from ``engine.reader``, read by ``placement``'s workers."""
    batch_size = placement.batch_size
    workers = placement.workers_for(math.ceil(len(dataset.samples) / batch_size))
    files, collate_fn = reader(model, dataset.root, [s.path for s in dataset.samples], on_device)
    return torch.utils.data.DataLoader(
        files, batch_size=batch_size, num_workers=workers, pin_memory=placement.device.type == "cuda",
        collate_fn=collate_fn, prefetch_factor=4 if workers else None, worker_init_fn=start_worker)


@dataclass(frozen=True)
class LocalEngine:
    """Stage one on this machine, where ``placement`` says."""

    placement: Placement

    def batches(self, model: FeatureExtractor, dataset: Dataset, desc: str = "extract"
                ) -> Iterator[BatchOutput]:
        """Features of every readable image in ``dataset``, in order, one batch at a time.

        ``placement.execution`` is how the model runs (``extraction.execution``); ``model``
        itself is not changed, so a model being fine-tuned keeps its own BatchNorm layers.
        """
        p = self.placement
        decoding = loader(model, dataset, p, p.decode == "device")
        batches = iter(decoding)  # the workers start decoding while the model is being prepared
        runner = prepare(model, p.execution, p.device, decoding.batch_size, p.dtype, p.quantized)

        def embedded() -> Iterator[BatchOutput]:
            with torch.inference_mode(), p.autocast():
                for batch in batches:
                    yield embed(batch, model, runner, p.device)

        yield from counted(embedded(), len(decoding.dataset), desc, p.progress)
