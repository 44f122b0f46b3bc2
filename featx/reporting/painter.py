"""A command's pictures drawn by a helper process that the command starts as it starts.

Importing matplotlib takes 0.3 s of a core, drawing a picture 0.1 s, and Python's clean-up of
matplotlib at exit 0.1 s: in the command's own process all of it comes after its work. A helper
started first imports matplotlib on another core while the command imports its own libraries,
and draws each picture as soon as it is known, beside the command's remaining work (fit-head: the
search's pictures while the chosen head is fitted again on train+val). The pictures are ``plots``'
either way, from the same arguments; where the helper cannot start, or fails, they are drawn in
this process, as they are without one.

    with ahead():                          # the command line, as the command starts
        ...
        drawing = Drawing({"confusion_val.png": ("confusion_matrix_png", {...}), ...})
        ...
        drawing.into(folder)               # the pictures, in their folder
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# A picture: the name of a ``plots`` function, and its arguments besides ``path``.
Picture = tuple[str, dict]
# The pictures a helper is asked for, left in its folder (a pipe would hold the parent up until
# the helper reads, where the arguments, a 120-class confusion matrix, are larger than its buffer).
ORDER = "order.pickle"


class _Helper:
    """The helper process, and the folder it draws in; it serves one order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(folder)],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)

    def order(self, pictures: dict[str, Picture]) -> None:
        with open(self.folder / ORDER, "wb") as f:
            pickle.dump(pictures, f)
        try:
            self.process.stdin.write(b"draw\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it has ended: ``drawn`` says so
            pass

    def drawn(self) -> bool:
        """Whether every picture ordered is drawn: waits for the helper to end."""
        _, err = self.process.communicate()
        if self.process.returncode:
            log.debug("the pictures' helper failed (exit %s): %s", self.process.returncode,
                      err.decode(errors="replace").strip()[-500:])
        return self.process.returncode == 0

    def stop(self) -> None:
        """Ended, where it was not waited for (never told, or told and not collected)."""
        if self.process.returncode is None:
            self.process.kill()
            self.process.communicate()


_helper: _Helper | None = None  # the one ``ahead`` started, until a ``Drawing`` takes it


@contextlib.contextmanager
def ahead() -> Iterator[None]:
    """A helper for the pictures drawn within, started now where this process may use more than
    one core and has not imported matplotlib (where it has, drawing here costs the drawing alone;
    on one core the helper's own start would cost more than it saves); stopped, and its folder
    removed, at the end, whether it drew or not (an error, an interrupted run)."""
    global _helper
    if "matplotlib" in sys.modules or _cores() < 2:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="featx-pictures-") as folder:
        try:
            helper = _helper = _Helper(Path(folder))
        except OSError as e:  # no interpreter to start (a frozen application): drawn here
            log.debug("no helper for the pictures: %s", e)
            helper = None
        try:
            yield
        finally:
            _helper = None
            if helper is not None:
                helper.stop()


class Drawing:
    """``pictures`` (each file's name, and what draws it), drawn from now on by the helper
    ``ahead`` started where there is one unused, else here, as they are put into their folder."""

    def __init__(self, pictures: dict[str, Picture]):
        global _helper
        self.pictures, self.helper, _helper = pictures, _helper, None
        if self.helper is not None:
            self.helper.order(pictures)

    def beside(self) -> contextlib.AbstractContextManager:
        """For the work done while the helper draws: the BLAS libraries on a core fewer, as the
        helper holds one, and a product waits for its slowest thread (on 2 cores, a 120-class
        head's fit on train+val took 0.42 s on two threads beside the helper, 0.21 s on one)."""
        if self.helper is None:
            return contextlib.nullcontext()
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas")
        most = max((lib.num_threads for lib in blas.lib_controllers), default=1)
        return blas.limit(limits=max(1, min(most, _cores() - 1)))

    def into(self, folder: Path) -> list[str]:
        """The pictures, in ``folder``; returns their names."""
        if self.helper is not None and self.helper.drawn():
            for name in self.pictures:
                shutil.move(self.helper.folder / name, folder / name)
        else:
            _draw(folder, self.pictures)
        return list(self.pictures)


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _draw(folder: Path, pictures: dict[str, Picture]) -> None:
    from . import plots

    for name, (function, arguments) in pictures.items():
        getattr(plots, function)(path=folder / name, **arguments)


def _serve(folder: Path) -> None:
    """The helper: matplotlib imported first, then, once told, the pictures ordered drawn; it
    ends with the command, killed or not."""
    from ..util.processes import die_with_parent

    die_with_parent()
    import matplotlib.backends.backend_agg  # what savefig draws PNGs with
    import matplotlib.figure  # noqa: F401 (the Figure each picture is drawn on)

    if sys.stdin.readline():  # nothing, where the command ended without pictures
        with open(folder / ORDER, "rb") as f:
            _draw(folder, pickle.load(f))


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
