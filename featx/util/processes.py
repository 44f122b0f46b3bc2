"""Worker processes that end with the process that started them.

A decoding worker blocked on its queue never learns that its parent was killed (kill -9 runs no
clean-up), and would live on, holding its memory, for as long as the machine runs. On Linux the
kernel is asked to kill it the moment its parent dies (``PR_SET_PDEATHSIG``); elsewhere it ends
when it next finds its queue gone, as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """Called first thing in a forked worker: be killed when the parent dies, or exit at once if
    it is already gone (it died before this call, and the worker was given to init)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl in this libc: as on other systems
        return
    if parent == 1 or os.getppid() != parent:
        os._exit(1)
