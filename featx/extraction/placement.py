"""Settings resolved once: ``place`` turns a ``Runtime`` and an engine into the ``Engine`` that
every stage running the frozen base takes, with its device, precision and batch size decided and
checked before any scan of the data or model load, so that a typo fails at once."""

from __future__ import annotations

from ..backbones.identity import DTYPES
from ..errors import ConfigError
from ..runtime import ENGINES, RayEngine, Runtime
from .engine import Engine, device_of, placement_on
from .local import LocalEngine
from .ray_pool import start


def place(runtime: Runtime | None = None, engine: str | RayEngine = "local",
          dtype: str | None = None, why: str = "as asked") -> Engine:
    """The engine that runs the frozen base as ``runtime`` says (``Runtime``'s defaults when
    None): ``engine`` local (this machine), or ray (or a ``RayEngine`` with its settings) for a
    pool of actors on a Ray cluster. ``dtype``: the features' precision (``identity.DTYPES``;
    None: the fastest that gives the same features, ``engine.precision``; ``why`` that one, when
    given)."""
    runtime = runtime or Runtime()
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown `dtype` {dtype!r}: choose one of {', '.join(DTYPES)}")
    if engine == "local":
        return LocalEngine(placement_on(device_of(runtime), runtime, dtype, why))
    if engine == "ray" or isinstance(engine, RayEngine):
        if dtype == "int8":  # its graph is calibrated on the run's own images, on this machine
            raise ConfigError("`dtype` int8 runs on the local engine: leave out `engine`")
        return start(RayEngine() if engine == "ray" else engine, runtime, dtype, why)
    raise ConfigError(f"unknown `engine` {engine!r}: choose one of {', '.join(ENGINES)}")
