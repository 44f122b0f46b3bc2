"""A cache brought up to date, shared by extraction and scoring: under the cache's lock
``update_cache`` reuses every feature still valid (``cache.reuse``), has an engine compute the
rest (``engine.Engine``: this machine's or a Ray pool's), streams them into durable shards
(``cache.partial``), and writes the cache whole (``cache.writer``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..backbones.extractor import FeatureExtractor
from ..cache import reuse
from ..cache.format import Contents, data_id
from ..cache.lock import locked
from ..cache.partial import Partial
from ..cache.reader import previous
from ..cache.writer import write
from ..data.folders import Dataset
from ..errors import CacheError, first_line
from .engine import BatchOutput, Engine
from .int8 import quantized_engine

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    path: Path
    n_images: int
    n_failed: int
    seconds: float
    up_to_date: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)
    n_reused: int = 0  # images whose features came from the cache or an interrupted run
    n_refused: int = 0  # rows of the manifest that name no image to use (in ``failed`` too)
    execution: str = ""  # what computed the features extracted this time (``extraction.execution``)
    dtype: str = "float32"  # the features' precision, and why that one (``engine.precision``)
    why_dtype: str = ""

    @property
    def n_extracted(self) -> int:
        return 0 if self.up_to_date else self.n_images - self.n_reused

    @property
    def images_per_second(self) -> float:
        return (self.n_extracted + self.n_failed) / self.seconds if self.seconds else 0.0
def update_cache(path: Path, dataset: Dataset, model: FeatureExtractor, engine: Engine,
                 force: bool = False, desc: str = "extract") -> ExtractResult:
    """Make the cache at ``path`` hold ``model``'s features of every image in ``dataset``, those
    it lacks computed by ``engine`` to its precision.

    Holds ``PATH.lock`` throughout; a second run on the same cache is refused with a
    ``CacheError``. Files that failed to read are tried again every time.
    """
    start = time.perf_counter()
    identity, data, placement = model.identity(), data_id(dataset.root), engine.placement
    dtype = placement.dtype
    with locked(path), contextlib.ExitStack() as stack:
        if dtype == "int8":  # the graph is part of what the features are
            engine, graph = quantized_engine(engine, model, dataset, path, force)
            identity = dataclasses.replace(identity, quantized=graph)
        old = None if force else previous(path, identity, dtype, data)
        if old is not None:
            stack.callback(old.close)
        store = Partial(path, identity.key(dtype), dtype, fresh=force)
        plan = reuse.plan(dataset, [s for s in (old, *store.shards) if s is not None])
        n_kept = sum(f.source is not old for f in plan.found.values())
        if n_kept:
            log.info("resuming: %d images were already extracted in %s", n_kept, store.dir)
        batches = functools.partial(engine.batches, desc=desc)
        failed, execution = _extract_into(store, model, dataset, plan.todo, batches)
        found = {**plan.found, **reuse.plan(dataset, store.written, plan.todo).found}
        contents = Contents.of(dataset, found, failed)
        result = ExtractResult(path, len(found), len(failed), 0.0, failed=list(contents.failed),
                               n_reused=len(plan.found), n_refused=len(dataset.refused),
                               execution=execution, dtype=dtype,
                               why_dtype=placement.why_dtype,
                               up_to_date=old is not None and old.contents == contents)
        if not result.up_to_date:
            try:
                write(path, contents, [found[i] for i in sorted(found)], identity, dtype,
                      tmp=store.dir / f"{path.name}.tmp", device=str(placement.device),
                      execution=execution or "none", decode=placement.decode,
                      seconds=time.perf_counter() - start,
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
