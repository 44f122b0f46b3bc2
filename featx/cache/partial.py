"""An unfinished extraction: ``NAME.h5.partial/``, a folder of shard files of extracted features.

Each shard is written under a temporary name, synced, and renamed into place, so a shard is
whole or absent whatever stops the run (Ctrl-C, ``kill -9``, a power cut, a full disk). The
first batch is written at once, and then a shard whenever a second has passed since the last, so
a kill loses about a second of work. Shards are written by a thread of their own, so the model
never waits for the disk; one shard at most is in flight, and a failed write is raised at the
next batch.
A shard that cannot be read, or was made with other settings, is deleted and its images are
extracted again; a leftover temporary file is never trusted.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..backbones.identity import storage_dtype
from ..data.folders import Sample
from ..data.images import error_line
from ..errors import CacheError
from ..util.files import durable_write, own_folder
from . import reuse

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0


class Shard:
    """The rows of one shard file (a ``reuse.Source``)."""

    def __init__(self, path: Path, entries: dict[str, reuse.Entry]):
        self.path, self.entries = path, entries

    def features(self, start: int, stop: int) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as z:
            return z["features"][start:stop]


def _read_shard(path: Path, key: str) -> Shard:
    with np.load(path, allow_pickle=False) as z:  # reading every member checks the zip's CRCs
        if str(z["config_key"]) != key:
            raise ValueError("made with other settings")
        entries = reuse.entries(z["paths"].tolist(), z["size"], z["mtime_ns"], z["sha256"])
        if z["features"].shape[0] != len(entries):
            raise ValueError(f"{z['features'].shape[0]} feature rows for {len(entries)} paths")
    return Shard(path, entries)


class Partial:
    """The shards kept from interrupted runs for the cache at ``path``, and the ones this run adds."""

    def __init__(self, path: Path, key: str, dtype: str, fresh: bool = False):
        self.dir, self.key, self.dtype = path.with_name(path.name + ".partial"), key, dtype
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="featx-shard-writer")
        self._writing: Future | None = None
        if fresh or self.dir.is_file():  # featx 0.1 kept an unfinished cache as one file here
            self._delete()
        try:
            own_folder(self.dir)  # a link there would have shards read, and strays deleted, elsewhere
        except OSError as e:
            raise CacheError(f"{self.dir}, where the unfinished extraction of {path} is kept, "
                             f"cannot be used ({e.strerror or e}): remove it, or choose another "
                             f"`out`") from e
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()
        self.shards: list[Shard] = []
        dropped: list[str] = []
        for p in sorted(self.dir.glob("shard-*.npz")):
            try:
                self.shards.append(_read_shard(p, key))
            except Exception as e:  # whatever cannot be read back is not trusted: extract it again
                dropped.append(f"{p.name} ({error_line(e)})")
                p.unlink()
        if dropped:
            log.warning("%s: deleted %d shard(s) that cannot be used, e.g. %s; their images will be "
                        "extracted again", self.dir, len(dropped), dropped[0])
        self.written: list[Shard] = []  # by this run
        self._pending: list[tuple[list[Sample], list[str], np.ndarray]] = []
        self._last_flush = -math.inf
        self._next = 1 + max((int(s.path.stem.split("-")[1]) for s in self.shards), default=0)

    @property
    def n_rows(self) -> int:
        return sum(len(s.entries) for s in self.shards)

    def add(self, samples: list[Sample], digests: list[str], features: np.ndarray) -> None:
        """Buffer a batch of rows; hand them to the writer if a second has passed since the last."""
        if samples:
            self._pending.append((samples, digests, features))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self._submit()

    def flush(self) -> None:
        """Write every buffered row as a shard, and return once it is durably on disk."""
        self._submit()
        self._wait()

    def _submit(self) -> None:
        if not self._pending:
            return
        self._wait()
        rows, self._pending = self._pending, []
        number, self._next, self._last_flush = self._next, self._next + 1, time.monotonic()
        self._writing = self._writer.submit(self._write, number, rows)

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _write(self, number: int, rows: list[tuple[list[Sample], list[str], np.ndarray]]) -> None:
        samples = [s for batch, _, _ in rows for s in batch]
        path = self.dir / f"shard-{number:06d}.npz"
        paths = [s.path.as_posix() for s in samples]
        digests = [d for _, batch, _ in rows for d in batch]
        with durable_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, config_key=np.array(self.key), paths=np.array(paths),
                     size=np.array([s.size for s in samples], np.int64),
                     mtime_ns=np.array([s.mtime_ns for s in samples], np.int64),
                     sha256=np.array(digests),
                     features=np.concatenate([x for _, _, x in rows]).astype(storage_dtype(self.dtype)))
        shard = Shard(path, reuse.entries(paths, [s.size for s in samples],
                                          [s.mtime_ns for s in samples], digests))
        self.shards.append(shard)
        self.written.append(shard)

    def remove(self) -> None:
        """Delete the shards, once the cache holds their rows."""
        self._writer.shutdown()
        self._delete()

    def _delete(self) -> None:
        if self.dir.is_dir() and not self.dir.is_symlink():  # a link goes, what it names stays
            shutil.rmtree(self.dir)
        else:
            self.dir.unlink(missing_ok=True)
