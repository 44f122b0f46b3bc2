"""Caches over the memory budget: read a block of rows at a time, the torch heads fitted by
partial_fit, the others refused, and never the whole matrix in memory."""

from __future__ import annotations

import logging
import os
import tracemalloc

import h5py
import numpy as np
import pytest

import featx
from featx.cache.reader import DiskFeatures
from featx.cli import main
from featx.fitting import streaming


def write_blobs(path, n: int, dim: int, classes: int):
    """A cache of ``n`` rows of Gaussian blobs, one per class, laid out as ``featx extract`` lays
    out a real one: 80 % train, 10 % val, the rest test, sorted by class within each split."""
    labels, splits = [], []
    for split, share in (("train", 0.8), ("val", 0.1), ("test", None)):
        m = round(n * share) if share else n - len(splits)
        labels.append(np.arange(m) * classes // max(m, 1))
        splits += [split] * m
    labels = np.concatenate(labels)
    rng = np.random.default_rng(0)
    # Centres 6 noise standard deviations apart: a linear head gets most, not all, right.
    centres = 1 + rng.standard_normal((classes, dim), np.float32) * 6 / np.sqrt(2 * dim)
    features = rng.standard_normal((n, dim), np.float32) + centres[labels]
    return featx.write_cache(path, features, labels, [f"class{c}" for c in range(classes)], splits=splits)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """3,000 × 256 float32: blocks of 1,024 rows (one HDF5 chunk each), train | val | test rows
    0–2,399 | 2,400–2,699 | 2,700–2,999, so val and test share the last block."""
    return write_blobs(tmp_path_factory.mktemp("blobs") / "blobs.h5", 3000, 256, classes=3)


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The number of rows each read of a ``/features`` dataset returns."""
    seen, getitem = [], h5py.Dataset.__getitem__

    def counted(self, key, *args, **kwargs):
        out = getitem(self, key, *args, **kwargs)
        if self.name == "/features":
            seen.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    return seen


def test_blocks_hold_exactly_the_rows_of_each_split(blobs, reads):
    whole = featx.open_cache(blobs)
    fc = featx.open_cache(blobs, in_memory=False)
    assert isinstance(fc.features, DiskFeatures) and fc.features.block_rows == 1024
    assert fc.features.shape == whole.features.shape and fc.features.nbytes == whole.features.nbytes
    assert np.array_equal(fc.labels, whole.labels) and fc.paths == whole.paths
    reads.clear()
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(fc.splits == split)
        got = list(fc.features.blocks(rows))
        idx = np.concatenate([i for i, _ in got])
        assert np.array_equal(idx, rows)
        assert np.array_equal(np.concatenate([X for _, X in got]), whole.features[rows])
        shuffled = list(fc.features.blocks(rows, order=[2, 0, 1]))
        assert np.array_equal(np.sort(np.concatenate([i for i, _ in shuffled])), rows)
        for i, X in shuffled:
            assert np.array_equal(X, whole.features[i])
    # train: blocks 0, 1, 2, then 2, 0, 1; val and test: block 2 only, twice each.
    assert reads == [1024, 1024, 952, 952, 1024, 1024, 952, 952, 952, 952]


def test_streamed_linear_head_matches_the_in_memory_one(blobs, caplog):
    memory = featx.fit_head(blobs, model="linear", params={"epochs": 5}, out="memory", search=False)
    with caplog.at_level(logging.INFO, logger="featx"):
        streamed = featx.fit_head(blobs, model="linear", params={"epochs": 5}, out="streamed",
                                  max_memory=1 << 20)
    assert "features of 2.93 MiB, more than the 1 MiB memory budget: streaming them in batches of " \
           "16384 rows" in caplog.text
    # All of train fits one batch here, so only the float64 standardisation differs.
    fc = featx.open_cache(blobs)
    a, b = (featx.load_bundle(r.bundle).predict_proba(fc.features) for r in (memory, streamed))
    np.testing.assert_allclose(b, a, atol=1e-4)
    for split, m in memory.metrics.items():
        assert streamed.metrics[split]["n"] == m["n"]
        assert streamed.metrics[split]["accuracy"] == pytest.approx(m["accuracy"], abs=1e-3)
        assert streamed.metrics[split]["loss"] == pytest.approx(m["loss"], rel=1e-3)
    assert [p.name for p in streamed.plots] == ["confusion_val.png", "history.png"]  # curves too


def test_streaming_never_holds_the_matrix(tmp_path, monkeypatch, reads):
    cache = write_blobs(tmp_path / "big.h5", 16 * 1024, 256, classes=3)  # 16 MiB, 16 blocks
    nbytes = 16 * 1024 * 256 * 4
    monkeypatch.setattr(streaming, "MIN_BATCH_BLOCKS", 1)  # batches of one block, 1 MiB

    def peak(**kwargs) -> tuple[int, featx.FitResult]:
        tracemalloc.start()
        try:
            r = featx.fit_head(cache, model="linear", params={"epochs": 2}, search=False, **kwargs)
            return tracemalloc.get_traced_memory()[1], r
        finally:
            tracemalloc.stop()

    # numpy's arrays, h5py's reads among them, are traced: the in-memory path shows the matrix.
    assert peak(max_memory=nbytes)[0] > nbytes
    reads.clear()
    streamed, r = peak(max_memory=4 << 20)
    # A few blocks at once (a read, its selected rows, a batch, the scaler's float64 copy) and
    # the paths as Python strings: under half the matrix.
    assert streamed < nbytes / 2
    assert reads and max(reads) <= 1024
    assert r.metrics["val"]["accuracy"] > 0.9


@pytest.mark.parametrize("model", ["svm", "knn"])
def test_heads_that_need_memory_refuse_above_the_budget(blobs, model):
    with pytest.raises(featx.ConfigError) as e:
        featx.fit_head(blobs, model=model, max_memory=1 << 20)
    assert str(e.value) == (
        f"{blobs}: its features take 2.93 MiB (3,000 x 256 float32), more than the 1 MiB memory "
        f"budget, and the {model} head needs them all in memory: use `model` logistic, linear or "
        f"mlp, which stream them from disk, or raise `max_memory`")


def test_the_logistic_head_searches_streamed_features_with_every_setting_trained_together(blobs, tmp_path):
    streamed = featx.fit_head(blobs, max_memory=1 << 20, out=tmp_path / "s")
    whole = featx.fit_head(blobs, out=tmp_path / "w")
    assert len(streamed.search.trials) == 11 and streamed.search.best.params["C"] > 0
    # The chosen setting is kept as trained, on train alone: its val figures are held out.
    assert list(streamed.metrics) == ["train", "val", "test"]
    assert featx.load_bundle(streamed.bundle).info["fitted_on"] == "train"
    assert abs(streamed.metrics["val"]["accuracy"] - whole.metrics["val"]["accuracy"]) < 0.03
    again = featx.fit_head(blobs, max_memory=1 << 20, out=tmp_path / "again")
    assert again.metrics == streamed.metrics  # seeded: the same run twice
    fixed = featx.fit_head(blobs, max_memory=1 << 20, search=False, out=tmp_path / "f")
    assert fixed.search is None and fixed.metrics["val"]["accuracy"] > 0.8


def test_the_cli_refuses_in_one_line(blobs, capsys):
    assert main(["fit-head", str(blobs), "--model", "knn", "--max-memory", "1M"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"featx: error: {blobs}: its features take 2.93 MiB (3,000 x 256 float32), more than the "
        f"1 MiB memory budget, and the knn head needs them all in memory: use --model logistic, "
        f"linear or mlp, which stream them from disk, or raise --max-memory\n")


def test_a_cache_written_from_arrays_reads_back_as_given(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    path = featx.write_cache(tmp_path / "mine.h5", X, [0, 1, 0, 1, 0, 1], ["cat", "dog"],
                             splits=["train"] * 4 + ["val"] * 2)
    fc = featx.open_cache(path)
    assert np.array_equal(fc.features, X) and fc.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert fc.classes == ["cat", "dog"] and fc.paths[0] == "row-0000000" and fc.splits[-1] == "val"
    assert fc.identity.backbone == "external" and fc.identity.feature_dim == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[0, 1]), "6 feature rows, but 2 labels, 6 paths and 6 splits: give one of each per row"),
    (dict(labels=[0, 1, 2, 0, 1, 0]), "labels must index the 2 classes, 0 to 1"),
    (dict(splits=["train"] * 5 + ["dev"]),
     r"unknown split\(s\) dev: each row's split is one of train, val, test"),
    (dict(dtype="float64"), "unknown dtype 'float64': choose one of float32, float16, bfloat16, int8"),
])
def test_writing_a_cache_from_arrays_refuses_what_does_not_fit(tmp_path, kwargs, message):
    given = {"features": np.zeros((6, 2), np.float32), "labels": [0, 1] * 3, "classes": ["cat", "dog"],
             **kwargs}
    with pytest.raises(featx.ConfigError, match=f"^{message}$"):
        featx.write_cache(tmp_path / "bad.h5", **given)
    assert not (tmp_path / "bad.h5").exists()


def test_features_are_never_read_from_a_cache_replaced_after_its_labels(tmp_path):
    """An extract finishing while fit-head runs renames a new cache over the old one: the rows
    already read (labels, paths) must not meet the new file's features."""
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    path = featx.write_cache(tmp_path / "c.h5", X, [0, 1] * 3, ["cat", "dog"])
    fc = featx.open_cache(path, in_memory=False)
    assert fc.features.read().tolist() == X.tolist()  # the same file: read as ever
    newer = featx.write_cache(tmp_path / "newer.h5", X[::-1].copy(), [1, 0] * 3, ["cat", "dog"])
    os.replace(newer, path)
    for read in (fc.features.read, lambda: list(fc.features.blocks())):
        with pytest.raises(featx.CacheError, match=r"c\.h5 was replaced while featx read it .*: run "
                                                   r"the same command again$"):
            read()
