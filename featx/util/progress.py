"""Progress of a pass over images: a tqdm bar on a terminal, plain log lines anywhere else.

A bar redraws itself with carriage returns: a terminal shows them as one line that moves, but a
log (CI, nohup, a pipe) keeps every frame. Where stderr is not a terminal, progress is instead a
line on the ``featx`` logger at most every ``FEATX_PROGRESS_SECONDS`` seconds (default 10), and
one when the pass ends::

    featx: extract: 320/1,600 img (20%), 84.2 img/s, ETA 0:15
    featx: extract: 1,600/1,600 img (100%), 85.0 img/s, in 0:18

How often is often enough depends on who reads the log, so it is the user's to set: a CI job
wants few lines, someone following a slow CPU run with ``tail -f`` more; 0 logs every batch.
A notebook keeps tqdm's widget, which writes no frames.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from time import monotonic

from tqdm.auto import notebook_tqdm, std_tqdm, tqdm

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENV = "FEATX_PROGRESS_SECONDS"
DEFAULT_SECONDS = 10.0


def _clock(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


class LogLines:
    """What featx asks of a tqdm bar (``update``, ``set_postfix``, iterating, ``with``), as a log
    line at most every ``seconds`` and one more on ``close``."""

    def __init__(self, total: int, desc: str, unit: str, seconds: float,
                 iterable: Iterable | None = None) -> None:
        self.total, self.desc, self.unit, self.seconds, self.iterable = total, desc, unit, seconds, iterable
        self.n = 0
        self.postfix = ""
        self.start = self.logged = monotonic()
        self.closed = False

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = monotonic()
        if now - self.logged >= self.seconds and self.n < self.total:  # the last one: close's line
            self.logged = now
            log.info(self.line(now))

    def set_postfix(self, **values: object) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())

    def close(self) -> None:
        # An interrupted pass gets its line too: how far it got is what the reader wants to know.
        if not self.closed:
            self.closed = True
            log.info(self.line(monotonic(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        when = (f"in {_clock(elapsed)}" if final else
                f"ETA {_clock((self.total - self.n) / rate)}" if rate else "ETA ?")
        return (f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{share}, {rate:.1f} {self.unit}/s, "
                f"{when}{self.postfix}")


Bar = tqdm | LogLines


def _seconds() -> float:
    text = os.environ.get(ENV, str(DEFAULT_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ConfigError(f"{ENV}={text!r}: expected a number of seconds, 0 or more")
    return seconds


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool = True,
                 iterable: Iterable | None = None) -> Bar:
    """Progress over ``total`` units: a tqdm bar on a terminal or in a notebook, else
    ``LogLines``; nothing at all unless ``enabled``. With ``iterable``, iterate over the result
    to step through it one unit per item."""
    if enabled and not sys.stderr.isatty() and notebook_tqdm is std_tqdm:
        return LogLines(total, desc, unit, _seconds(), iterable)
    return tqdm(iterable, total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)
