"""featx audit: the ranking of suspected label errors, the near-duplicate search against a
brute-force one, leaks across splits, the CSV, the bad inputs' one-line errors, and the command
line end to end."""

from __future__ import annotations

import csv
import re
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

import featx
from featx.auditing.duplicates import WHITEN_ROWS, embedded, near_pairs, same_bytes
from featx.cli import main
from featx.cli.text import summary
from featx.reporting.audit_csv import COLUMNS, read_audit

from conftest import COLOURS, FAST


def blobs(rng, per_class: int, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``classes`` well-separated Gaussian blobs, ``per_class`` rows each."""
    centres = rng.normal(0, 4, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(0, 1, (len(labels), dim))).astype(np.float32), labels


def test_the_flipped_labels_are_the_most_suspicious(tmp_path):
    rng = np.random.default_rng(0)
    X, y = blobs(rng, 30)
    flipped = np.array([3, 31, 47, 70])
    y[flipped] = (y[flipped] + 1) % 3
    cache = featx.write_cache(tmp_path / "c.h5", X, y, ["a", "b", "c"])
    r = featx.audit(cache)
    assert {f.path for f in r.labels[:4]} == {f"row-{i:07d}" for i in flipped}
    assert [f.score for f in r.labels] == sorted((f.score for f in r.labels), reverse=True)
    assert all(f.given != f.suggested for f in r.labels)
    assert r.proba.shape == (90, 3) and np.allclose(r.proba.sum(1), 1)
    assert r.accuracy == pytest.approx(86 / 90, abs=0.02)


def test_the_summary_fits_a_screen_with_many_classes(tmp_path):
    rng = np.random.default_rng(5)
    X, y = blobs(rng, 5, classes=120, dim=16)
    X[::7] = X[1::7][: len(X[::7])]  # many copies, and many doubtful labels
    r = featx.audit(featx.write_cache(tmp_path / "c.h5", X, y, [f"class{i}" for i in range(120)]))
    lines = summary(r).splitlines()
    assert len(r.labels) > 5 and len(r.duplicates) > 5 and len(lines) <= 18, lines
    assert lines[-1].startswith("... ") and lines[-1].endswith(" more near-duplicates in the CSV")


def test_planted_copies_are_found_and_those_across_splits_are_leaks(tmp_path):
    rng = np.random.default_rng(1)
    X, y = blobs(rng, 20, classes=2, dim=64)
    X += rng.normal(0, 3, X.shape).astype(np.float32)  # distinct images, alike only by class
    splits = ["train"] * 30 + ["val"] * 10
    X[35] = X[3] + rng.normal(0, 0.05, 64)   # a train image again in val
    X[12] = X[5] + rng.normal(0, 0.05, 64)   # twice in train
    y[35], y[12] = y[3], y[5]
    cache = featx.write_cache(tmp_path / "c.h5", X, y, ["a", "b"], splits=splits)
    r = featx.audit(cache)
    assert [(f.path, f.other, f.split) for f in r.leaks] == [("row-0000003", "row-0000035", "train/val")]
    assert [(f.path, f.other, f.split) for f in r.duplicates] == [("row-0000005", "row-0000012", "train")]
    assert not r.whitened and r.leaks[0].score > 0.99
    rows, found = read_audit(r.csv), r.labels + r.duplicates + r.leaks
    assert r.csv == tmp_path / "c.audit.csv"
    assert [(f.kind, f.path, f.other) for f in rows] == [(f.kind, f.path, f.other) for f in found]
    assert [f.score for f in rows] == pytest.approx([f.score for f in found], abs=1e-6)
    with open(r.csv, newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS


def _brute_force(z: np.ndarray, threshold: float, neighbours: int) -> set[tuple[int, int]]:
    sims = z @ z.T
    found = set()
    for i in range(len(z)):
        later = [(sims[i, j], j) for j in range(i + 1, len(z)) if sims[i, j] >= threshold]
        found |= {(i, j) for _, j in sorted(later, reverse=True)[:neighbours]}
    return found


@pytest.mark.parametrize(("row_block", "column_block"), [(1, 1), (7, 5), (16, 64), (1024, 8192)])
def test_the_blocked_search_finds_what_a_brute_force_one_does(row_block, column_block):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(61, 8)).astype(np.float32)
    z[40:48] = z[2] + rng.normal(0, 0.01, (8, 8))  # nine alike: more than `neighbours` each
    z[20] = z[19] + 0.01
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    first, second, sims = near_pairs(z, 0.6, neighbours=3, row_block=row_block, column_block=column_block)
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == _brute_force(z, 0.6, 3)
    assert len(first) == len(set(zip(first.tolist(), second.tolist(), strict=True)))
    assert np.allclose(sims, np.einsum("ij,ij->i", z[first], z[second]))
    assert len(near_pairs(z[:0], 0.6)[0]) == 0 and len(near_pairs(z[:1], 0.6)[0]) == 0


def test_whitened_features_keep_copies_alike_and_tell_similar_ones_apart():
    rng = np.random.default_rng(3)
    n, d = WHITEN_ROWS + 100, 160
    # Features of a decaying spectrum: a few broad axes most images share, many narrow ones.
    spread = np.geomspace(10, 0.1, d)
    X = (rng.normal(size=(n, d)) * spread).astype(np.float32)
    X[1] = X[0] + rng.normal(0, 0.02, d) * spread  # a copy, slightly changed
    X[3, :24] = X[2, :24]  # alike in the broad axes only
    z = embedded(X)
    assert z.shape == (n, 128) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert z[0] @ z[1] > 0.99
    centred = X - X.mean(0)
    plain = centred[2] @ centred[3] / np.linalg.norm(centred[2]) / np.linalg.norm(centred[3])
    assert z[2] @ z[3] < 0.5 < plain


def test_same_bytes_pairs_each_copy_with_the_first_and_skips_unknown_hashes():
    first, second = same_bytes(["a", "", "b", "a", "", "a", "b"])
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 3), (0, 5), (2, 6)]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_input_is_one_line_each(tmp_path, capsys):
    rng = np.random.default_rng(4)
    X, y = blobs(rng, 6, classes=2)
    one = featx.write_cache(tmp_path / "one.h5", X, np.zeros(12, int), ["a"])
    few = featx.write_cache(tmp_path / "few.h5", X[:9], y[:9], ["a", "b"])
    unlabelled = featx.write_cache(tmp_path / "unlabelled.h5", X, y, ["a", "b"])
    with h5py.File(unlabelled, "r+") as f:  # as a cache `featx score` made of a folder of no classes
        f["labels"][...] = -1
    cases = {
        (str(one),): f"{one} holds images of one class only (a): telling a wrong label takes two "
                     f"classes or more",
        (str(few),): f"{few}: 1 class(es) have fewer images than the 5 folds (b 3), and each fold's "
                     f"heads must learn every class: lower --folds, or add images",
        (str(few), "--folds", "3"): None,
        (str(unlabelled),): f"{unlabelled} holds no labels (its images are in no class folder, as in "
                            f"a cache `featx score` made): audit the cache `featx extract` made of a "
                            f"folder with one subfolder per class, or with --labels",
        (str(few), "--folds", "1"): "--folds must be a whole number of 2 or more, not 1",
        (str(few), "--similarity", "0"): "--similarity must be above 0 and at most 1, not 0.0",
        (str(few), "--out", str(few), "--folds", "3"): f"--out {few} would replace {few}, which this "
                                                       f"run reads: choose another --out",
    }
    for argv, message in cases.items():
        code, _, err = _run(capsys, "audit", *argv)
        assert (code, err) == ((0, "") if message is None else (1, f"featx: error: {message}\n"))


def _varied(path, colour, seed: int) -> None:
    """An image of ``colour`` with a broad pattern of its own: a random-weight network's features
    of plain noise images of one colour are all nearly the same."""
    rng = np.random.default_rng(seed)
    broad = np.kron(rng.normal(0, 70, (4, 5, 3)), np.ones((8, 8, 1)))
    pixels = np.clip(np.asarray(colour) + broad + rng.normal(0, 25, (32, 40, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_audit_end_to_end_on_images(tmp_path, capsys):
    root = tmp_path / "colours"
    for s, (split, n) in enumerate({"train": 6, "val": 3}.items()):
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(n):
                _varied(root / split / name / f"{name}{i}.png", colour, 1000 * s + 100 * c + i)
    shutil.copy(root / "train/red/red0.png", root / "val/red/again.png")
    shutil.copy(root / "train/blue/blue1.png", root / "train/blue/again.png")
    cache = featx.extract(root, out=tmp_path / "colours.h5", **FAST).path
    # Random weights make any two images of a colour some 0.9 alike: only copies are above 0.99.
    code, out, _ = _run(capsys, "audit", str(cache), "--similarity", "0.99")
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(rf"audited 20 images in 2 classes \(train 13, val 7\) in [\d.]+ s -> "
                        rf"{re.escape(str(tmp_path / 'colours.audit.csv'))}", lines[0])
    assert re.fullmatch(r"out of fold \(5-fold logistic heads, C=[\d.e-]+\): 1\.0000 right; 0 suspected "
                        r"label errors", lines[1])
    assert lines[3:] == ["  leak      1.000  train/red/red0.png = val/red/again.png  (train/val)",
                         "  duplicate 1.000  train/blue/again.png = train/blue/blue1.png"]
    found = read_audit(tmp_path / "colours.audit.csv")
    assert [(f.kind, f.given, f.suggested) for f in found] == [("duplicate", "blue", "blue"),
                                                               ("leak", "red", "red")]
    (tmp_path / "mine.csv").write_text("not featx's\n")
    code, _, err = _run(capsys, "audit", str(cache), "--out", str(tmp_path / "mine.csv"))
    assert code == 1 and "is not a file featx wrote" in err and "--force" in err
    assert _run(capsys, "audit", str(cache), "--out", str(tmp_path / "mine.csv"), "--force")[0] == 0
