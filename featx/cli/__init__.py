"""The command line: ``featx COMMAND``, each command one call of featx's Python API
(``commands``), its options generated from the library's settings (``parser``, ``options``), its
output the results as text (``text``)."""

from __future__ import annotations

import logging
import sys

from ..errors import FeatxError
from .commands import in_flags
from .parser import EXAMPLES, build_parser
from .text import plain

__all__ = ["EXAMPLES", "build_parser", "main"]


class _OneLine(logging.Formatter):
    """Each message one line: the file names and attributes in it escaped (``text.plain``)."""

    def format(self, record: logging.LogRecord) -> str:
        return plain(super().format(record))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine("featx: %(message)s"))
    logger = logging.getLogger("featx")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args.func(args)
    except FeatxError as e:
        print(f"featx: error: {plain(in_flags(str(e), args.parser))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `featx backbones | head`
        sys.stderr.close()
        return 0
    finally:  # a second call in the same process must not log to this call's stderr
        logger.removeHandler(handler)
    return 0
