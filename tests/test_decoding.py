"""Decoding on the model's device: the same crops, features and skips as the PIL path in workers.

Tolerance, measured on these noise images: crops from ``decode_batch`` on the CPU differ from
``Preprocessing.crop`` by at most 2 (uint8), mean absolute difference ≤ 0.05 per image; files the
reader decodes with PIL (PNG, CMYK) are equal. Random-weight features: cosine similarity ≥ 0.9999.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featx.backbones.preprocessing import Preprocessing
from featx.data import device_decode as decoding
from featx.data.device_decode import Jpeg, JpegInfo, RawReader, collate_encoded, decode_batch
from featx.data.readers import ImageReader, collate

from conftest import write_image

MEAN_TOLERANCE, MAX_TOLERANCE = 0.05, 2
PREPROCESSING = {
    "bicubic": Preprocessing(256, 224, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "bilinear": Preprocessing(160, 128, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _corrupt_jpeg() -> bytes:
    """A whole JPEG (header, end marker) whose scan names a component its frame does not have."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    data[data.index(b"\xff\xda") + 5] = 9
    return bytes(data)


def _files(root: Path) -> list[Path]:
    """Every kind of file the reader meets, as paths relative to ``root``."""
    write_image(root / "wide.jpg", size=(300, 200), format="JPEG")
    write_image(root / "tall.jpg", size=(200, 333), seed=1, format="JPEG", quality=95, subsampling=0)
    write_image(root / "small.jpg", size=(40, 32), seed=2, format="JPEG")  # enlarged, not reduced
    write_image(root / "progressive.jpg", size=(120, 90), seed=3, format="JPEG", progressive=True)
    write_image(root / "a_jpeg.png", size=(90, 120), seed=4, format="JPEG")  # known by its bytes
    noise = np.random.default_rng(5).integers(0, 255, (50, 70, 3), np.uint8)
    Image.fromarray(noise[..., 0]).save(root / "grey.jpg")
    Image.fromarray(noise).convert("CMYK").save(root / "cmyk.jpg")
    write_image(root / "photo.png", size=(64, 48), seed=6)
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((root / "wide.jpg").read_bytes()[:600])
    (root / "corrupt.jpg").write_bytes(_corrupt_jpeg())
    return sorted(p.relative_to(root) for p in root.iterdir())


def _both(root: Path, paths: list[Path], p: Preprocessing, device: str = "cpu"):
    """(decode_batch's Batch, the PIL path's Batch) of the same files."""
    raw = collate_encoded([RawReader(root, paths, p.crop)[i] for i in range(len(paths))])
    pil = collate([ImageReader(root, paths, p.crop)[i] for i in range(len(paths))])
    return decode_batch(raw, p, torch.device(device)), pil


def _differences(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    d = (a.cpu().int() - b.cpu().int()).abs()
    return d.float().mean().item(), int(d.max())


@pytest.mark.parametrize("interpolation", PREPROCESSING)
def test_the_same_crops_digests_and_skips_as_the_pil_path(tmp_path, interpolation):
    paths = _files(tmp_path)
    out, pil = _both(tmp_path, paths, PREPROCESSING[interpolation])
    assert (out.indices, out.digests, out.failed) == (pil.indices, pil.digests, pil.failed)
    assert {paths[i].name: why for i, why in out.failed} == {
        "corrupt.jpg": "OSError: broken data stream when reading image file",
        "empty.jpg": "OSError: empty file (0 bytes)", "truncated.jpg": "OSError: Truncated File Read"}
    assert out.images.dtype == torch.uint8 and out.images.shape == pil.images.shape
    for name, a, b in zip([paths[i].name for i in out.indices], out.images, pil.images, strict=True):
        if name in ("photo.png", "cmyk.jpg"):  # decoded by PIL in the reader, as before
            assert torch.equal(a, b), name
        else:
            mean, largest = _differences(a, b)
            assert mean <= MEAN_TOLERANCE and largest <= MAX_TOLERANCE, (name, mean, largest)


def test_the_reader_hands_over_the_bytes_of_what_the_device_can_decode(tmp_path):
    paths = _files(tmp_path)
    reader = RawReader(tmp_path, paths, PREPROCESSING["bilinear"].crop)
    kinds = {p.name: type(reader[i][1]).__name__ for i, p in enumerate(paths)}
    assert kinds == {"a_jpeg.png": "Jpeg", "cmyk.jpg": "Tensor", "corrupt.jpg": "Jpeg",
                     "empty.jpg": "NoneType", "grey.jpg": "Jpeg", "photo.png": "Tensor",
                     "progressive.jpg": "Jpeg", "small.jpg": "Jpeg", "tall.jpg": "Jpeg",
                     "truncated.jpg": "NoneType", "wide.jpg": "Jpeg"}
    jpeg = reader[paths.index(Path("wide.jpg"))][1]
    assert jpeg.data == (tmp_path / "wide.jpg").read_bytes()
    assert jpeg.info == JpegInfo(len(jpeg.data), 1, 300 * 200)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    write_image(tmp_path / "turned.jpg", size=(120, 70), seed=orientation, format="JPEG", exif=exif)
    out, pil = _both(tmp_path, [Path("turned.jpg")], PREPROCESSING["bilinear"])
    mean, largest = _differences(out.images, pil.images)
    assert mean <= MEAN_TOLERANCE and largest <= MAX_TOLERANCE


def test_a_jpeg_the_decoder_refuses_is_decoded_by_pil_and_the_rest_still_in_one_call(tmp_path, monkeypatch):
    paths = [write_image(tmp_path / f"{i}.jpg", size=(80, 60), seed=i, format="JPEG").relative_to(tmp_path)
             for i in range(3)]
    refused = len((tmp_path / "1.jpg").read_bytes())
    decode_jpeg, calls = decoding.decode_jpeg, []

    def refuse_one(jpegs, **kw):
        calls.append(len(jpegs) if isinstance(jpegs, list) else 1)
        if any(len(j) == refused for j in (jpegs if isinstance(jpegs, list) else [jpegs])):
            raise RuntimeError("nvjpeg says no")
        return decode_jpeg(jpegs, **kw)

    monkeypatch.setattr(decoding, "decode_jpeg", refuse_one)
    out, pil = _both(tmp_path, paths, PREPROCESSING["bilinear"])
    assert calls == [3, 1, 1, 1] and out.indices == [0, 1, 2] and not out.failed
    assert torch.equal(out.images[1], pil.images[1])  # PIL's own crop


@pytest.mark.parametrize("pixels, runs", [
    ([10, 10, 10], [slice(0, 3)]),
    ([60, 50, 10], [slice(0, 1), slice(1, 3)]),
    ([200, 10], [slice(0, 1), slice(1, 2)]),  # a photo over the budget goes alone
    ([], []),
])
def test_a_decoder_call_takes_a_bounded_number_of_pixels(monkeypatch, pixels, runs):
    monkeypatch.setattr(decoding, "PIXELS_PER_CALL", 100)
    assert list(decoding.decode_calls([JpegInfo(1, 1, n) for n in pixels])) == runs


def test_a_batch_crosses_from_a_worker_process_in_one_shared_tensor(tmp_path):
    paths = _files(tmp_path)
    p = PREPROCESSING["bilinear"]
    loader = torch.utils.data.DataLoader(RawReader(tmp_path, paths, p.crop), batch_size=len(paths),
                                         num_workers=1, collate_fn=collate_encoded)
    (raw,) = list(loader)
    assert raw.data.numel() == sum(j.nbytes for j in raw.jpegs) and len(raw.jpegs) == 7
    out, pil = decode_batch(raw, p, torch.device("cpu")), _both(tmp_path, paths, p)[1]
    assert (out.indices, out.failed) == (pil.indices, pil.failed)


def test_a_batch_of_only_skips_or_only_reader_crops(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    write_image(tmp_path / "a.png")
    p = PREPROCESSING["bilinear"]
    skips, _ = _both(tmp_path, [Path("empty.jpg")], p)
    assert skips.images is None and skips.failed == [(0, "OSError: empty file (0 bytes)")]
    crops, pil = _both(tmp_path, [Path("a.png")], p)
    assert torch.equal(crops.images, pil.images)


def test_features_match_the_pil_path(tmp_path, lite0_random):
    paths = _files(tmp_path)
    out, pil = _both(tmp_path, paths, lite0_random.preprocessing)
    with torch.inference_mode():  # three images are enough, and keep the test fast
        a, b = lite0_random(out.images[:3]), lite0_random(pil.images[:3])
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.9999


def test_payload_is_a_jpeg_only_with_its_end_marker(tmp_path):
    data = write_image(tmp_path / "a.jpg", format="JPEG").read_bytes()
    assert decoding.jpeg_info(data) == JpegInfo(len(data), 1, 40 * 32)
    assert decoding.jpeg_info(data + b"trailing") is None  # PIL reads it: it goes to PIL
    assert isinstance(RawReader(tmp_path, [Path("a.jpg")], PREPROCESSING["bilinear"].crop)[0][1], Jpeg)


@cuda
def test_on_cuda_the_crops_and_features_are_close_to_the_pil_path(tmp_path, lite0_random):
    paths = _files(tmp_path)
    out, pil = _both(tmp_path, paths, lite0_random.preprocessing, "cuda")
    assert out.images.is_cuda and (out.indices, out.failed) == (pil.indices, pil.failed)
    mean, _ = _differences(out.images, pil.images)
    assert mean <= 2  # nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's
    model = lite0_random.to("cuda")
    with torch.inference_mode():
        a, b = model(out.images), model(pil.images.cuda())
    lite0_random.to("cpu")
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.999


@cuda
@pytest.mark.parametrize("orientation", [1, 6])
def test_on_cuda_exif_orientation_comes_out_upright(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    write_image(tmp_path / "turned.jpg", size=(120, 70), format="JPEG", exif=exif)
    out, pil = _both(tmp_path, [Path("turned.jpg")], PREPROCESSING["bilinear"], "cuda")
    assert _differences(out.images, pil.images)[0] <= 2


def test_a_large_jpeg_is_decoded_scaled_down_to_twice_the_resize_and_crops_alike(tmp_path):
    from featx.data.images import load_rgb

    pre = Preprocessing(64, 56, "bicubic", (0.5,) * 3, (0.5,) * 3)
    ramp = np.linspace(0, 255, 600)
    pixels = np.stack([ramp[None, :].repeat(520, 0), ramp[:520, None].repeat(600, 1),
                       np.full((520, 600), 90.0)], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    assert load_rgb(path, pre.resize_size).size == (150, 130)  # 1/4: the shorter side >= 128
    assert load_rgb(path, 200).size == (600, 520)  # less than 4 times 200: decoded whole
    reader = ImageReader(tmp_path, [Path("big.jpg")], pre.crop, shorter=pre.resize_size)
    whole = pre.crop(load_rgb(path)).int()
    assert (reader[0][1].int() - whole).abs().float().mean() < 1 and reader[0][1].shape == whole.shape
