"""One writer per cache or bundle: a lock file beside it, held with flock so a killed holder
frees it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CacheError, FeatxError
from ..util.files import NOFOLLOW

if os.name == "nt":  # no flock on Windows: a byte-range lock, which the OS also drops with its holder
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


# The descriptors of the locks this process holds; a forked child (a DataLoader worker) closes
# its copies (``forget_inherited``).
_HELD: set[int] = set()


def forget_inherited() -> None:
    """In a forked child: close the copies of the parent's lock descriptors. An flock belongs to
    the open file, which every fork shares, so without this a killed writer's lock would live on
    in its decoding workers for the seconds they take to notice, refusing a re-run meanwhile."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire(lock: Path, path: Path, error: type[FeatxError]) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        if not _try_lock(fd):
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise error(f"{path} is being written by another featx process (pid {holder}): "
                        f"wait for it to finish, or stop it, then run this again") from None
        # The last holder unlinks the file as it lets go; a file locked after that is no longer
        # the one on disk, and locking it would let a third process in beside us.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, error: type[FeatxError] = CacheError) -> Iterator[None]:
    """Hold ``PATH.lock`` for the block, or raise ``error`` naming the process that holds it.

    The kernel drops an flock when its process dies, even by ``kill -9``, so no lock outlives its
    writer and none has to be cleaned up by hand.
    """
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock, path, error)
    except OSError as e:  # a folder that is a file, or one this user may not write in
        raise error(f"cannot write {e.filename or lock} ({e.strerror or e}): choose another "
                    f"`out`") from e
    _HELD.add(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk
            raise error(f"cannot write {lock} ({e.strerror or e}): make room, or choose another "
                        f"`out`") from e
        yield
    finally:
        with contextlib.suppress(PermissionError):  # Windows keeps a file that is open: reused next time
            lock.unlink(missing_ok=True)
        _HELD.discard(fd)
        os.close(fd)
