"""Decoding on the model's device: JPEG bytes are read by DataLoader workers and decoded, resized
and cropped where the model runs.

Why: PIL decoding and resizing in CPU workers caps a 16-core host at about 6,000 images/s, below
what a GPU runs ResNet-50 at. ``RawReader`` hands the device each JPEG's bytes (and the EXIF
orientation from its header); every other file, and any JPEG the device could not decode as PIL
does (CMYK, truncated, a header PIL refuses), is decoded by PIL in the worker as ``ImageReader``
does, so every file featx reads is still read, with the same checks and the same recorded reasons.
``decode_batch`` decodes a batch with ``torchvision.io.decode_jpeg`` (nvjpeg on CUDA), turns each
image upright, resizes and crops it as ``Preprocessing.crop`` does; a JPEG the decoder refuses is
decoded by PIL instead, or recorded as skipped with PIL's reason, never failing the batch.

Tolerance: on the CPU the decoded pixels equal PIL's (both are libjpeg-turbo), and crops differ
from ``Preprocessing.crop`` by at most 1 (uint8) in nearly every pixel: mean absolute difference
≤ 0.3, largest ≤ 5 on photo-like images (bicubic; ≤ 1 bilinear), because PIL resamples in fixed
point and sometimes vertically first. Pure noise at some sizes reaches 20 in a few pixels. On CUDA,
nvjpeg's IDCT and chroma upsampling add their own small differences.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

from ..backbones.preprocessing import Preprocessing, bounded
from .images import check_file, error_line, load_rgb, open_image, read_image
from .readers import Batch, Item, ReadBatch, Reader, sort_items

JPEG_MAGIC = b"\xff\xd8\xff"
# Decoded pixels per decode_jpeg call: 3 bytes each, so ~800 MB of device memory at a time, however
# large the photos in a batch.
PIXELS_PER_CALL = 1 << 28

# How ImageOps.exif_transpose turns each EXIF orientation upright, on C×H×W tensors.
_UPRIGHT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-2, -1),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-2, -1),
    6: lambda t: t.rot90(-1, (-2, -1)),
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),
    8: lambda t: t.rot90(1, (-2, -1)),
}


class JpegInfo(NamedTuple):
    nbytes: int
    orientation: int  # EXIF; 1 is upright
    pixels: int       # as its header declares


@dataclass(frozen=True)
class Jpeg:
    data: bytes
    info: JpegInfo


def jpeg_info(data: bytes) -> JpegInfo | None:
    """What the device needs to decode ``data`` as ``load_rgb`` would; None for a file PIL must
    decode: not a JPEG, truncated (no end marker), not RGB or greyscale, or any header PIL refuses
    (its decompression-bomb check included)."""
    if not data.startswith(JPEG_MAGIC) or not data.endswith(b"\xff\xd9"):
        return None
    try:
        with open_image(io.BytesIO(data)) as im:
            if im.mode not in ("RGB", "L"):
                return None
            return JpegInfo(len(data), im.getexif().get(ExifTags.Base.Orientation, 1), im.width * im.height)
    except Exception:  # read_image will decode it, or record why not, exactly as it does today
        return None


class RawReader(Reader):
    """A JPEG's bytes (``Jpeg``), read once for them and their hash; any other file decoded and
    cropped by ``crop`` as ``ImageReader`` does."""

    def __init__(self, root: Path, paths: list[Path], crop: Callable[[Image.Image], torch.Tensor]):
        super().__init__(root, paths)
        self.crop = crop

    def read(self, i: int, path: Path) -> tuple[Jpeg | torch.Tensor, str]:
        check_file(path)
        with open(path, "rb") as f:
            data = f.read(len(JPEG_MAGIC))
            if data == JPEG_MAGIC:
                data += f.read()
        info = jpeg_info(data)
        if info is not None:
            return Jpeg(data, info), hashlib.sha256(data).hexdigest()
        image, digest = read_image(path)
        return self.crop(image), digest


@dataclass
class EncodedBatch(ReadBatch):
    is_jpeg: list[bool]  # for each of indices: its bytes are in data, else its crop is in crops
    crops: torch.Tensor | None  # uint8 k×3×S×S, the images the reader decoded, in order
    # Every JPEG's bytes end to end: one tensor crosses from the worker, not one (and one file
    # descriptor) per image.
    data: torch.Tensor
    jpegs: list[JpegInfo]


def collate_encoded(items: list[Item]) -> EncodedBatch:
    ok, failed = sort_items(items)
    jpegs = [p for _, p, _ in ok if isinstance(p, Jpeg)]
    crops = [p for _, p, _ in ok if not isinstance(p, Jpeg)]
    data = bytearray(b"".join(j.data for j in jpegs))
    packed = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return EncodedBatch(indices=[i for i, _, _ in ok], digests=[d for _, _, d in ok], failed=failed,
                        is_jpeg=[isinstance(p, Jpeg) for _, p, _ in ok],
                        crops=torch.stack(crops) if crops else None, data=packed,
                        jpegs=[j.info for j in jpegs])


def _resize(image: torch.Tensor, size: list[int], interpolation: InterpolationMode) -> torch.Tensor:
    """``TF.resize`` as PIL does it: horizontally, then vertically, through 8-bit values. In one
    float pass (as torchvision does on CUDA) bicubic overshoots differ from PIL's far more often."""
    (h, w), x = image.shape[-2:], image.float()
    height, width = _compute_resized_output_size((h, w), size)  # exactly the size PIL's path gets
    for shape in ((h, width), (height, width)):
        if shape != tuple(x.shape[-2:]):
            x = TF.resize(x, list(shape), interpolation, antialias=True).clamp_(0, 255).round_()
    return x.to(torch.uint8)


def _crop(image: torch.Tensor, orientation: int, p: Preprocessing) -> torch.Tensor:
    image = bounded(_UPRIGHT.get(orientation, lambda t: t)(image))
    return TF.center_crop(_resize(image, [p.resize_size], InterpolationMode(p.interpolation)), [p.crop_size])


def _decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG decoded to RGB on ``device``; None for one the decoder refuses. The batched call
    fails whole for one bad image, so then each is decoded alone to find which."""
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec's, on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            found: list[torch.Tensor | None] = []
            for jpeg in jpegs:
                try:
                    found.append(decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    found.append(None)
            return found


def decode_calls(jpegs: list[JpegInfo]) -> Iterator[slice]:
    """Runs of consecutive ``jpegs`` of at most PIXELS_PER_CALL pixels (or one larger image)."""
    start, pixels = 0, 0
    for i, info in enumerate(jpegs):
        if i > start and pixels + info.pixels > PIXELS_PER_CALL:
            yield slice(start, i)
            start, pixels = i, 0
        pixels += info.pixels
    if start < len(jpegs):
        yield slice(start, len(jpegs))


def _crop_on_cpu(jpeg: torch.Tensor, p: Preprocessing) -> torch.Tensor | str:
    """A JPEG the device refused, as the reader decodes any other file; or PIL's reason why not."""
    try:
        return p.crop(load_rgb(io.BytesIO(jpeg.numpy().tobytes())))
    except Exception as e:  # a skip, recorded as the reader records one
        return error_line(e)


def decode_batch(batch: EncodedBatch, preprocessing: Preprocessing, device: torch.device) -> Batch:
    """The batch's images decoded, upright, resized and cropped on ``device``: a ``Batch`` of
    uint8 N×3×S×S images there, in the order of its indices, as ``data.collate`` makes on the CPU.

    A JPEG the device cannot decode is decoded by PIL, or joins ``failed`` with PIL's reason.
    """
    jpegs = torch.split(batch.data, [j.nbytes for j in batch.jpegs])
    decoded: list[torch.Tensor | str] = []  # a crop, or why there is none
    for run in decode_calls(batch.jpegs):
        for jpeg, info, image in zip(jpegs[run], batch.jpegs[run], _decode(list(jpegs[run]), device),
                                     strict=True):
            if image is None:
                crop = _crop_on_cpu(jpeg, preprocessing)
                decoded.append(crop if isinstance(crop, str) else crop.to(device))
            else:
                decoded.append(_crop(image, info.orientation, preprocessing))
    from_jpegs = iter(decoded)
    from_reader = iter(() if batch.crops is None else batch.crops.to(device, non_blocking=True))
    out, images = Batch(indices=[], digests=[], failed=list(batch.failed)), []
    for index, digest, is_jpeg in zip(batch.indices, batch.digests, batch.is_jpeg, strict=True):
        image = next(from_jpegs) if is_jpeg else next(from_reader)
        if isinstance(image, str):
            out.failed.append((index, image))
        else:
            out.indices.append(index)
            out.digests.append(digest)
            images.append(image)
    out.images = torch.stack(images) if images else None
    out.failed.sort()
    return out
