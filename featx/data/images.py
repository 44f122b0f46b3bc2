"""Opening one image file safely: what no reader may open, decoding to upright 8-bit RGB with
PIL's bomb check an error, and the one-line reason recorded for a file that cannot be used."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..util.files import sha256_file


@contextlib.contextmanager
def open_image(fp: str | os.PathLike | BinaryIO) -> Iterator[Image.Image]:
    """``Image.open``, with PIL's decompression-bomb warning an error while the image is open."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as im:
            yield im


def load_rgb(path: str | os.PathLike, shorter: int | None = None) -> Image.Image:
    """Decode any supported image to 8-bit RGB, upright as its EXIF orientation says; a JPEG at
    least four times ``shorter`` on its shorter side decoded at 1/2, 1/4 or 1/8 of its size, its
    shorter side kept at least twice ``shorter``.

    PIL's decompression-bomb warning becomes an error, so a huge declared size is a skipped file.
    """
    with open_image(path) as im:
        im.seek(0)  # first frame of an animation
        if shorter and im.format == "JPEG" and min(im.size) >= 4 * shorter:
            # libjpeg scales in the DCT domain as it decodes: a 12-megapixel photo wanted at 256 px
            # decoded at 1/4 took 44 ms instead of 153. Kept twice the size wanted, the resize
            # after still smooths it: pixels 0.2 of 255 apart on average from a full decode's.
            scale = 2 * shorter / min(im.size)
            im.draft(None, (math.ceil(im.width * scale), math.ceil(im.height * scale)))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: PIL's convert("RGB") would clip instead of scaling down.
            a = np.asarray(im, dtype=np.float64)
            im = Image.fromarray((a / max(a.max(), 1.0) * 255).astype(np.uint8), "L")
        return im.convert("RGB")


def error_line(e: Exception) -> str:
    """How a file that could not be read is reported: the exception's type and first line."""
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _text_start(path: Path) -> str | None:
    """The first line of a file that begins as plain text (an HTML error page saved as .jpg)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.isascii() or not all(chr(b).isprintable() or chr(b).isspace() for b in head):
        return None
    return head.decode().strip().splitlines()[0][:40]


def check_file(path: Path) -> None:
    """Raise ``OSError`` for a path no reader should open: not a regular file, or empty."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError("not a regular file")  # reading a pipe or a device could block forever
    if st.st_size == 0:
        raise OSError("empty file (0 bytes)")


def read_image(path: Path, shorter: int | None = None) -> tuple[Image.Image, str]:
    """The image as ``load_rgb`` decodes it (for a resize of its shorter side to ``shorter``),
    and the sha256 of the file's bytes.

    Raises for a file that is no usable image (``OSError`` or one of PIL's decompression-bomb
    errors); ``error_line`` of the exception is the reason recorded for it.
    """
    check_file(path)
    try:
        image = load_rgb(path, shorter)
    except UnidentifiedImageError:
        text = _text_start(path)
        if text is None:
            raise
        raise UnidentifiedImageError(f"a text file, not an image: it begins {text!r}") from None
    # Hashed once decoded: a file that is no image (20 GiB of a sparse .jpg) is refused from its
    # first bytes, not after reading all of them.
    return image, sha256_file(path)
