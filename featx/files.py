"""Files on disk: content hashes, writes that a crash leaves either undone or whole, sizes in words."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync(path: Path) -> None:
    """Push a file's (or a folder's list of names') data to the disk, past the OS's cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def durable_write(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; once written it is synced and renamed onto ``path``.

    A rename is atomic, so ``path`` is never seen half-written, whether the writer raises, is
    killed, or the machine loses power; an exception removes the temporary file.
    """
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)  # the rename itself survives a power loss only once its folder is synced
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def size_text(n: int) -> str:
    """Bytes as people read them: ``1.53 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
