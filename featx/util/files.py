"""Files on disk: content hashes, writes that a crash leaves either undone or whole, sizes in words,
and the CSV files featx writes (a path checked before the work, cells safe from spreadsheets)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ..errors import ConfigError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` for a path read from a file (a CSV row), refused with ``ValueError``
    unless it stays under ``root``: relative, and never climbing out by ``..``. Links inside
    ``root`` are followed, as those of a data folder are."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ValueError(f"{relative!r} is not a path inside {root}")
    return root.joinpath(*parts)


def own_folder(path: Path) -> Path:
    """Make the folder ``path`` (and those above it) where it is not there; raise ``OSError``
    where a symbolic link stands at ``path``: featx makes none, and files written through one
    would land in a folder featx was never given."""
    if path.is_symlink():
        raise OSError(errno.ELOOP, "a symbolic link, which featx never makes", str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fsync(path: Path) -> None:
    """Push a file's (or a folder's list of names') data to the disk, past the OS's cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The flag that makes an open fail rather than follow a symbolic link (Windows has none).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextlib.contextmanager
def durable_write(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary file, new and empty, to write; once written it is synced and renamed
    onto ``path``.

    A rename is atomic, so ``path`` is never seen half-written, whether the writer raises, is
    killed, or the machine loses power; an exception removes the temporary file. What stands at
    the temporary name is removed, not written through, and the file is created only where
    nothing is (``O_EXCL``): a symbolic link planted there (in a folder from elsewhere) never
    sends the write outside. The rename, too, replaces a link at ``path`` rather than its target.
    """
    tmp = tmp or path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644))
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)  # the rename itself survives a power loss only once its folder is synced
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def folder_write(path: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to fill; once filled, its files are synced
    and it takes ``path``'s place in one step (an old folder there is then removed), so that
    ``path`` holds either the old folder or the new one whole, never a mix.

    An exception, or a crash, leaves ``path`` as it was. The caller holds ``path``'s lock
    (``cache.lock``), so that a temporary folder of another process beside it is a killed write's,
    removed here.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_leftovers(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():
            fsync(f)
        fsync(tmp)
        if path.is_dir():
            _exchange(tmp, path)  # the old folder is now at tmp, removed below
        else:
            os.rename(tmp, path)
        fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(path: Path) -> None:
    """Remove the ``.NAME.PID.tmp`` folders of writes to ``path`` that were killed, a link
    standing at such a name, not what it points to."""
    left = re.compile(rf"\.{re.escape(path.name)}\.\d+\.tmp")
    with contextlib.suppress(FileNotFoundError), os.scandir(path.parent) as entries:
        for entry in entries:
            if not left.fullmatch(entry.name):
                continue
            if entry.is_symlink() or not entry.is_dir():
                os.unlink(entry.path)
            else:
                shutil.rmtree(entry.path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders' names atomically (Linux's renameat2 RENAME_EXCHANGE); where that is not
    available, in two renames, between which a crash leaves ``b``'s old folder at ``a``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(b))
    except AttributeError:  # no renameat2 in this C library
        pass
    old = a.with_name(a.name + ".old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def size_text(n: int) -> str:
    """Bytes as people read them: ``1.53 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def result_name(folder: Path, what: str, key: str) -> str:
    """``FOLDER-WHAT-HASH.csv``, the default name of a CSV about ``folder``: the hash of its
    absolute path and of ``key`` (what else decides the result) keeps ``a/val`` and ``b/val``
    apart, and results of other models of the same folder."""
    digest = hashlib.sha256(f"{folder.resolve()}\0{key}".encode("utf-8", "surrogateescape"))
    return f"{folder.resolve().name}-{what}-{digest.hexdigest()[:8]}.csv"


# How an output featx writes begins (its first bytes), so that one found where a run writes can be
# told from a file featx did not write, which no output replaces without `force`.
CSV_START = re.compile(rb"path,")  # score's and classify's header
METRICS_START = re.compile(rb'\{\n "n": ')  # ``evaluation.Tally.result`` as score writes it
PNG_START = re.compile(rb"\x89PNG\r\n\x1a\n.{0,64}Matplotlib", re.DOTALL)  # its tEXt "Software"


def check_replaceable(path: Path, start: re.Pattern[bytes], inputs: Iterable[Path] = (),
                      force: bool = False) -> None:
    """Refuse, before any work, an output ``path`` that would replace one of the run's own
    ``inputs``, or a file featx did not write (one that does not begin as ``start`` says, a
    link, a device) unless ``force``."""
    target = path.resolve()
    for given in inputs:
        if target == given.resolve():
            raise ConfigError(f"`out` {path} would replace {given}, which this run reads: choose "
                              f"another `out`")
    if force or not os.path.lexists(path):
        return
    ours = path.is_file() and not path.is_symlink()
    if ours:
        with open(path, "rb") as f:
            ours = start.match(f.read(256)) is not None
    if not ours:
        raise ConfigError(f"{path} is not a file featx wrote, and this run's `out` would replace "
                          f"it: choose another `out`, or add `force=True` to replace it")


def check_csv_path(path: Path, inputs: Iterable[Path] = (), force: bool = False,
                   start: re.Pattern[bytes] = CSV_START) -> None:
    """Refuse, before any image is read, a CSV path that cannot be written, or that must not be
    (``check_replaceable``: a CSV of this kind begins as ``start`` says)."""
    if path.is_dir():
        raise ConfigError(f"`out` {path} is a folder: give the CSV file's path, e.g. {path / 'scores.csv'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make the folder for {path} ({e.strerror or e}): choose another "
                          f"`out`") from e
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"cannot write to {path.parent} (no permission): choose another `out`")
    check_replaceable(path, start, inputs, force)


# A spreadsheet runs a cell that starts with one of these as a formula; a leading ' makes it text.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(text: str) -> str:
    # A text that begins with a quote gets one more, so that ``uncell`` gives back exactly it.
    return "'" + text if text.startswith((*_FORMULA, "'")) else text


def uncell(text: str) -> str:
    """A CSV cell ``cell`` wrote, as the text it was."""
    return text[1:] if text.startswith("'") else text


def metrics_path(csv_path: Path) -> Path:
    """Where the metrics of a scored folder's labelled images go: beside its CSV."""
    return csv_path.with_suffix(".metrics.json")
