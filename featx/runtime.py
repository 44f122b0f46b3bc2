"""Where and how models run, as asked: device, batch size, decoding workers, execution and JPEG
decoding, as one ``Runtime`` that every stage takes, and the Ray engine's settings, with their
defaults written here alone. ``extraction.placement.place`` resolves them once for the machine.

Torch-free, so that the command line can read these defaults for its help without paying
seconds for torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError

EXECUTIONS = ("auto", "eager", "fold", "compile", "onnxruntime", "openvino")
DEFAULT_EXECUTION = "auto"
DECODES = ("auto", "cpu", "device")


def default_workers() -> int:
    return min(os.cpu_count() or 1, 16)


# The largest batch: 256 is a GPU's default, and a batch of this many 224-px images is 10 GB
# before the model runs; a larger number is a typo (and past C's integers, a traceback).
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class Runtime:
    """``device``: auto (CUDA when there is one), cpu, cuda or cuda:N. ``batch_size``: images per
    forward pass (None: 32 on a CPU, 256 on a GPU). ``workers``: image-decoding processes (None:
    one per core, at most 16; 0: decode in this process). ``execution``: how the frozen base runs
    (``extraction.execution``). ``decode``: where JPEGs are decoded, cpu (workers) or device (beside
    the model); auto is device on a GPU. ``progress``: show a progress bar."""

    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    execution: str = DEFAULT_EXECUTION
    decode: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        # Checked before any long scan or model load, so a typo fails at once.
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}: choose auto, cpu or cuda")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be at least 1, not {self.batch_size}")
        if self.batch_size is not None and self.batch_size > MAX_BATCH:
            raise ConfigError(f"`batch_size` must be at most {MAX_BATCH}, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"`workers` must be 0 or more, not {self.workers}")
        if self.execution not in EXECUTIONS:
            raise ConfigError(f"unknown `execution` {self.execution!r}: choose one of "
                              f"{', '.join(EXECUTIONS)}")
        if self.decode not in DECODES:
            raise ConfigError(f"unknown `decode` {self.decode!r}: choose one of {', '.join(DECODES)}")


ENGINES = ("local", "ray")
# The Ray engine's defaults that depend on the cluster it finds:
# CPUs of a CPU actor when none are asked for: its model's threads. Fewer, larger actors hold
# fewer copies of the base; on 2 cores one actor of 2 and two of 1 measured alike (README).
CPUS_PER_WORKER = 4
# Reading threads of an actor beside a GPU, at least.
GPU_READERS = 4
# Batches in a block when no block size is asked for: enough that reading the next batch overlaps
# the model's pass over this one for most of a block.
BATCHES_PER_BLOCK = 8


@dataclass(frozen=True)
class RayEngine:
    """Stage one on a Ray cluster (``extraction.ray_pool``): a pool of actors, each holding the
    frozen base once, reads, decodes and embeds blocks of the file list; ``Runtime.workers`` is
    the number of actors (None: as many as the cluster has room for now).

    ``address``: the cluster's (None: ``RAY_ADDRESS``, or a cluster ``ray start`` began on this
    machine, else a Ray of this run's own on this machine). ``gpus_per_worker``: None, one where
    the cluster has GPUs (and ``Runtime.device`` is not cpu), else none. ``cpus_per_worker``: the
    model's threads on a CPU actor, and the reading beside a GPU (None: 1 beside a GPU; else
    ``CPUS_PER_WORKER``, or fewer on a node that has fewer). ``block_size``: images an actor is
    given at a time, the unit a crash or a lost worker repeats (None: ``BATCHES_PER_BLOCK``
    batches).
    ``blocks_in_flight``: blocks queued at each actor, so that it never waits for the next one;
    with the results the driver has yet to write, that is all a run holds in memory, whatever
    the number of images."""

    address: str | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    block_size: int | None = None
    blocks_in_flight: int = 2

    def __post_init__(self) -> None:
        for name in ("gpus_per_worker", "cpus_per_worker", "block_size", "blocks_in_flight"):
            value = getattr(self, name)
            least = 0 if name == "gpus_per_worker" else 1
            if value is not None and value < least:
                raise ConfigError(f"`{name}` must be at least {least}, not {value}")
