"""Image folders: layout, formats and modes, and the files that cannot be read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featx
from featx.data.folders import find_images, scan, scan_unlabelled
from featx.data.images import load_rgb

from conftest import write_folder, write_image


def test_split_folders_are_the_splits(tmp_path):
    root = write_folder(tmp_path / "d", {"train": 2, "validation": 1, "test": 1})
    ds = scan(root)
    assert ds.classes == ("blue", "red")
    assert ds.split_counts() == {"train": 4, "val": 2, "test": 2}
    assert ds.samples[0].path == Path("train/blue/blue0.png") and ds.samples[0].label == 0


def test_a_folder_without_splits_is_one_training_pool(pool_folder):
    ds = scan(pool_folder)
    assert ds.split_counts() == {"train": 12} and {s.label for s in ds.samples} == {0, 1}


def test_nested_files_any_letter_case_and_hidden_files(tmp_path):
    root = tmp_path / "d"
    write_image(root / "cat" / "a.JPG", format="JPEG")
    write_image(root / "cat" / "deep" / "b.Png")
    write_image(root / "dog" / "c.webp")
    write_image(root / "dog" / ".hidden.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    assert [s.path.as_posix() for s in scan(root).samples] == ["cat/a.JPG", "cat/deep/b.Png", "dog/c.webp"]


@pytest.mark.parametrize("layout, message", [
    ({}, "no images found in {root}: featx reads .bmp, .gif"),
    ({"a.png": None}, "{root} holds images but no class subfolders: put each class's images in its own "
                      "subfolder, e.g. {root}/cats/, {root}/dogs/"),
    ({"val/x/a.png": None, "validation/x/b.png": None}, "{root} has both val/ and validation/: keep one"),
])
def test_layouts_that_are_refused(tmp_path, layout, message):
    root = tmp_path / "d"
    root.mkdir()
    for rel in layout:
        write_image(root / rel)
    with pytest.raises(featx.DataError) as e:
        scan(root)
    assert str(e.value).startswith(message.format(root=root))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(featx.DataError, match=f"{tmp_path}/nope is not a folder"):
        scan(tmp_path / "nope")


def test_unlabelled_folder_is_labelled_where_its_subfolders_are_classes(tmp_path):
    for rel in ("cat/a.png", "dog/b.png", "misc/c.png", "d.png", "val/dog/e.png", "test/f.png"):
        write_image(tmp_path / "s" / rel)
    ds = scan_unlabelled(tmp_path / "s", ("cat", "dog"))
    assert {s.path.as_posix(): s.label for s in ds.samples} == {
        "cat/a.png": 0, "d.png": -1, "dog/b.png": 1, "misc/c.png": -1, "test/f.png": -1, "val/dog/e.png": 1}


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_every_mode_becomes_rgb(tmp_path):
    rgb = Image.fromarray(np.full((8, 12, 3), (200, 40, 10), np.uint8))
    sixteen = Image.fromarray(np.full((8, 12), 40000, np.uint16))
    files = [
        _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg"),
        _save(rgb.convert("P"), tmp_path / "palette.gif"),
        _save(rgb.convert("RGBA"), tmp_path / "alpha.png"),
        _save(rgb.convert("L"), tmp_path / "grey.bmp"),
        _save(rgb.convert("LA"), tmp_path / "grey_alpha.png"),
        _save(rgb, tmp_path / "plain.tiff"),
        _save(sixteen, tmp_path / "sixteen.png"),
    ]
    for path in files:
        im = load_rgb(path)
        assert (im.mode, im.size) == ("RGB", (12, 8)), path.name
    # 16-bit values are scaled into 8 bits, not clipped to white.
    assert 0 < np.asarray(load_rgb(files[-1])).max() == 255
    assert np.asarray(load_rgb(tmp_path / "alpha.png"))[0, 0].tolist() == [200, 40, 10]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored landscape, shown portrait
    path = _save(img, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (10, 30)


def test_the_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, _, b = np.asarray(load_rgb(path))[0, 0]
    assert r > 200 and b < 50


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:600]


BAD_FILES = {
    "empty.jpg": b"",
    "text.jpg": b"this is not a picture\n",
    "truncated.jpg": _truncated_jpeg(),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_unreadable_files_raise(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(OSError):
        load_rgb(path)


def test_a_decompression_bomb_is_an_error_not_a_warning(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # PIL only warns below twice this
    with pytest.raises(Image.DecompressionBombWarning):
        load_rgb(path)


def test_find_images_is_sorted_and_relative(tmp_path):
    for rel in ("b/2.png", "a/1.png", "a/0.gif"):
        write_image(tmp_path / rel)
    assert [p.as_posix() for p in find_images(tmp_path)] == ["a/0.gif", "a/1.png", "b/2.png"]
