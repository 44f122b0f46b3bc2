"""What extraction runs for a ``Runtime.execution``: the model as it is (``eager``), with
BatchNorm folded in and checked against it (``fold``), that compiled (``compile``), the exported
graph on ONNX Runtime or OpenVINO (``onnxruntime``, ``openvino``), or, for ``auto``, the fastest
of these for this machine: on a GPU the fold (torch, with mixed precision), on a CPU whichever
installed runtime extracted this base fastest here, raced once on real batches and remembered."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ...backbones.extractor import FeatureExtractor
from ...errors import ConfigError
from . import cpu, exported
from .compiled import compiled
from .exported import RUNTIMES, Exported, Refused, check, computed_in, export
from .fold import TOLERANCE, fold_batchnorm, probe_batch

log = logging.getLogger(__name__)

# Batches each runtime runs when ``auto`` races them, after one to warm up: enough to rank runtimes
# that differ by 10 %, and all of them real work.
RACE_BATCHES = 2


class Runner(Protocol):
    """uint8 images (N×3×H×W on the device) in, features out; ``execution``: what runs them, as
    ``--execution`` names it."""

    execution: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchRunner:
    model: nn.Module
    execution: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # oneDNN's fast convolutions want NHWC in memory
        return self.model(images.contiguous(memory_format=torch.channels_last))


class Race:
    """The runtimes taking turns on a run's first batches, then the fastest alone; ``chosen`` is
    called with its name and every runtime's rate once that is known. ``execution``: the
    runtime that ran the latest batch.

    A turn is timed from its call to the next one: its forward pass and then the wait for the
    next batch, so a runtime that keeps the decoding workers off the cores pays for it. (Timed
    alone, OpenVINO and ONNX Runtime ran Lite0 equally fast on the AVX2 machine; in extraction
    OpenVINO's turns were 5-25 % slower.) A run too short to decide leaves the choice to the next.
    """

    def __init__(self, runners: list[Exported], chosen: Callable[[str, dict[str, float]], None]):
        self.runners, self.chosen = runners, chosen
        self.seconds: dict[str, list[float]] = {r.execution: [] for r in runners}
        self.turns, self.last = 0, None  # last: (runner, when it was called, its batch size)
        self.execution = runners[0].execution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        if self.last is not None and len(self.runners) > 1:
            runner, then, n = self.last
            self.seconds[runner.execution].append((now - then) / n)
            self._decide()
        runner = self.runners[self.turns % len(self.runners)]
        self.turns += 1
        self.last, self.execution = (runner, now, len(images)), runner.execution
        return runner(images)

    def _decide(self) -> None:
        # Each runtime's first turn is its warm-up and is left out.
        if min(len(t) for t in self.seconds.values()) <= RACE_BATCHES:
            return
        rates = {name: round(1 / statistics.median(t[1:]), 1) for name, t in self.seconds.items()}
        best = max(rates, key=rates.get)
        self.runners = [r for r in self.runners if r.execution == best]  # the others are freed
        self.chosen(best, rates)


def prepare(model: FeatureExtractor, execution: str, device: torch.device, batch_size: int,
            dtype: str = "float32", quantized: Path | None = None) -> Runner:
    """What runs ``model``'s features on ``device`` for ``execution``; ``model`` itself is left
    as it is; for int8, the graph ``quantized`` (``quantized.quantize``). A runtime refused (an
    export that fails, features off by more than the tolerance) is said in one line, and the
    fold runs instead; for bfloat16 and int8, which torch cannot run fast on a CPU, that line is
    the error."""
    check(execution, dtype, device.type)
    if device.type == "cpu" and execution in ("auto", *RUNTIMES):
        try:
            if dtype == "int8":
                return Exported(model, "openvino", dtype, quantized)
            return _exported(model, execution, dtype, batch_size)
        except Refused as e:
            if dtype in ("bfloat16", "int8"):  # torch on a CPU has no fast kernels to fall back to
                raise ConfigError(str(e)) from e
            log.warning("%s: running it in torch instead", e)
    return _torch(model, "fold" if execution in ("auto", *RUNTIMES) else execution, device,
                  batch_size)


def _torch(model: FeatureExtractor, execution: str, device: torch.device, batch_size: int
           ) -> TorchRunner:
    if device.type == "cuda":
        # Every batch has the same shape, so cuDNN's one-off search for the fastest convolution
        # algorithms is paid once and pays back on every batch after.
        torch.backends.cudnn.benchmark = True
    model = model.to(device, memory_format=torch.channels_last)
    if execution != "eager":
        probe = probe_batch(model).to(device).contiguous(memory_format=torch.channels_last)
        folded, n, error = fold_batchnorm(model, probe)
        if error > TOLERANCE:
            log.warning("%s: folding BatchNorm changed the features by %.1e (relative), more than "
                        "%.0e: running it eagerly instead", model.spec.name, error, TOLERANCE)
            execution = "eager"
        else:
            log.info("%s: folded %d BatchNorm layers into their convolutions", model.spec.name, n)
            model = folded if execution == "fold" else compiled(folded, batch_size)
    return TorchRunner(model, execution)


def _exported(model: FeatureExtractor, execution: str, dtype: str, batch_size: int) -> Runner:
    if execution != "auto":
        return Exported(model, execution, dtype)
    candidates = ["openvino"] if dtype == "bfloat16" else exported.installed()
    if not candidates:
        raise Refused("neither ONNX Runtime nor OpenVINO is installed (pip install onnxruntime)")
    graph = export(model)
    key = f"{cpu.describe()}; {computed_in(dtype)}; batch {batch_size}"
    chosen = exported.read_notes(graph).get("choices", {}).get(key)
    if chosen and chosen["execution"] in candidates:
        return Exported(model, chosen["execution"], dtype)
    runners = []
    for name in candidates:
        try:
            runners.append(Exported(model, name, dtype))
        except Refused as e:
            log.warning("%s: not using %s", e, name)
    if not runners:
        raise Refused(f"{model.spec.name}: no runtime gives its features exactly")
    if len(runners) == 1:
        return runners[0]

    def remember(best: str, rates: dict[str, float]) -> None:
        exported.record(graph, key, {"execution": best, "images_per_second": rates}, "choices")
        log.info("%s on this CPU (%s): %s is fastest (%s img/s in extraction), chosen once and "
                 "remembered in %s", model.spec.name, cpu.describe(), best,
                 ", ".join(f"{n} {r}" for n, r in rates.items()), exported.notes_path(graph))

    return Race(runners, remember)
