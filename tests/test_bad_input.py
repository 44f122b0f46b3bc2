"""Bad input: every file featx cannot use is a recorded skip with a one-line reason and the run
goes on; odd but valid images are all extracted; check predicts exactly what extract skips."""

from __future__ import annotations

import csv
import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featx
from featx.cli import main
from featx.data import images as images_mod

from conftest import FAST, QUIET, write_folder, write_image

RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8))
NOT_UTF8 = os.fsdecode(b"latin1-\xe9")  # a name made on a latin-1 system


def _encoded(fmt: str, image: Image.Image = RGB, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def _bomb() -> bytes:
    """A 70-byte PNG whose header declares 100,000 × 100,000 pixels."""
    png = bytearray(_encoded("PNG", Image.new("RGB", (1, 1))))
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded("JPEG", exif=exif)


def _animated() -> bytes:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    return _encoded("GIF", frames[0], save_all=True, append_images=frames[1:])


def _write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _locked(path: Path) -> None:
    path.write_bytes(_encoded("JPEG"))
    path.chmod(0)


BAD = {  # name -> (how the file is made, the reason recorded for it, from its start)
    "zero.jpg": (lambda p: _write(p, b""), "OSError: empty file (0 bytes)"),
    "truncated.jpg": (lambda p: _write(p, _encoded("JPEG")[:600]), "OSError: Truncated File Read"),
    "text.jpg": (lambda p: _write(p, b"this is not a picture\n"),
                 "UnidentifiedImageError: a text file, not an image: it begins 'this is not a picture'"),
    "error_page.png": (lambda p: _write(p, b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n"),
                       "UnidentifiedImageError: a text file, not an image: it begins '<!DOCTYPE html>'"),
    "bomb.png": (lambda p: _write(p, _bomb()),
                 "DecompressionBombError: Image size (10000000000 pixels) exceeds limit"),
    "locked.jpg": (_locked, "PermissionError: [Errno 13] Permission denied: "),
    "loop.jpg": (lambda p: os.symlink(p.name, p), "OSError: [Errno 40] Too many levels of symbolic links"),
    "pipe.jpg": (os.mkfifo, "OSError: not a regular file"),  # reading it would wait for ever
    f"{NOT_UTF8}-noise.jpg": (lambda p: _write(p, bytes(range(256))),
                              "UnidentifiedImageError: cannot identify image file"),
}
ODD = {  # valid images of every awkward kind: all must be extracted
    "cmyk.jpg": _encoded("JPEG", RGB.convert("CMYK")),
    "sixteen.png": _encoded("PNG", Image.fromarray(np.full((8, 12), 40000, np.uint16))),
    "palette.gif": _encoded("GIF", RGB.convert("P")),
    "animated.gif": _animated(),
    "alpha.png": _encoded("PNG", RGB.convert("RGBA")),
    "rotated.jpg": _exif_rotated(),
    "one_pixel.png": _encoded("PNG", Image.new("RGB", (1, 1), (9, 99, 199))),
    "café 日本.png": _encoded("PNG"),
    f"{NOT_UTF8}.png": _encoded("PNG"),
}


def _deny_root(mp: pytest.MonkeyPatch, locked: Path) -> None:
    """Root reads any file whatever its mode, so for root the kernel's refusal is played here."""
    if os.geteuid() != 0:
        return
    sha256_file = images_mod.sha256_file

    def refuse(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return sha256_file(path)

    mp.setattr(images_mod, "sha256_file", refuse)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A folder of every kind of bad and odd file, and its extraction: (root, ExtractResult)."""
    root = write_folder(tmp_path_factory.mktemp("odd") / "odd", {"train": 2}, classes={"b": (0, 0, 255)})
    (root / "train" / "a").mkdir()
    for name, (make, _) in BAD.items():
        make(root / "train" / "a" / name)
    for name, content in ODD.items():
        (root / "train" / "a" / name).write_bytes(content)
    (root / "train" / "empty").mkdir()
    os.symlink(".", root / "train" / "b" / "loop")
    with pytest.MonkeyPatch.context() as mp:
        _deny_root(mp, root / "train" / "a" / "locked.jpg")
        return root, featx.extract(root, out=root.parent / "odd.h5", **FAST)


def test_each_bad_file_is_skipped_with_a_one_line_reason(odd):
    _, r = odd
    failed = dict(r.failed)
    assert sorted(failed) == sorted(f"train/a/{name}" for name in BAD)
    for name, (_, reason) in BAD.items():
        assert failed[f"train/a/{name}"].startswith(reason) and "\n" not in failed[f"train/a/{name}"]


def test_odd_but_valid_images_are_all_extracted_and_strange_folders_passed_over(odd, caplog):
    root, r = odd
    fc = featx.open_cache(r.path)
    assert fc.classes == ["a", "b"] and np.isfinite(fc.features).all()
    assert fc.paths == sorted([f"train/a/{name}" for name in ODD] + ["train/b/b0.png", "train/b/b1.png"])
    assert featx.scan(root).ignored == (
        ("train/b/loop", "links back to a folder already read (a symlink loop): not read again"),
        ("train/empty", "an empty class folder: ignored"))
    assert f"{root}/train/empty: an empty class folder: ignored" in caplog.messages


def test_check_predicts_exactly_what_extract_skips(odd, monkeypatch, capsys):
    root, r = odd
    _deny_root(monkeypatch, root / "train" / "a" / "locked.jpg")
    report = featx.check(root, workers=0, progress=False)
    assert report.skipped == r.failed
    assert [[s.path.name for s in g] for g in report.duplicates] == [["café 日本.png", f"{NOT_UTF8}.png"]]
    assert main(["check", str(root), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"{len(BAD)} would be skipped:" and out[-5:] == [
        "2 passed over:", "  train/b/loop: links back to a folder already read (a symlink loop): not "
        "read again", "  train/empty: an empty class folder: ignored",
        "duplicates, the same bytes under other names: 1 group(s), 0 across splits:",
        "  train/a/café 日本.png = train/a/latin1-\\udce9.png"]
    # A name that is not UTF-8 is printed escaped rather than ending the run.
    assert "  train/a/latin1-\\udce9-noise.jpg: UnidentifiedImageError: cannot identify image file " \
           f"'{root}/train/a/latin1-\\udce9-noise.jpg'" in out


def test_unusual_names_survive_the_cache_a_bundle_and_the_csv(odd, monkeypatch):
    root, r = odd
    _deny_root(monkeypatch, root / "train" / "a" / "locked.jpg")
    bundle = featx.fit_head(r.path, val_split=0).bundle
    scored = featx.score(root / "train", bundle, out="s.csv", runtime=QUIET)
    assert (scored.n_scored, scored.n_failed) == (len(ODD) + 2, len(BAD))
    with open("s.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert rows[f"a/{NOT_UTF8}.png"]["predicted"] in ("a", "b")
    assert b"latin1-\xe9.png" in Path("s.csv").read_bytes()  # the file system's own bytes


def test_one_class_is_refused_by_fit_head_with_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "one", {"": 3}, classes={"red": (200, 50, 40)})
    assert main(["check", str(root), "--workers", "0", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "only one class, red: fit-head needs two or more"
    cache = featx.extract(root, **FAST).path
    assert main(["fit-head", str(cache)]) == 1
    assert capsys.readouterr().err == (f"featx: error: {cache}: the training data has 1 class(es); a "
                                       f"classifier needs at least two class subfolders with images\n")


def test_the_same_bad_files_are_tried_again_and_a_fixed_one_is_added(tmp_path):
    root = write_folder(tmp_path / "d", {"": 2})
    bad = root / "red" / "later.png"
    bad.write_bytes(b"")
    first = featx.extract(root, **FAST)
    assert first.n_failed == 1
    again = featx.extract(root, **FAST)
    assert again.up_to_date and again.failed == first.failed
    write_image(bad, (200, 50, 40))
    fixed = featx.extract(root, **FAST)
    assert (fixed.n_images, fixed.n_failed, fixed.n_reused) == (5, 0, 4)
