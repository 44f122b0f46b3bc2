"""fit_head(): splits, metrics, the bundle it writes, and the data it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featx
from featx.cli.text import summary
from featx.evaluation import split_indices

from conftest import FAST, write_folder


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 6, "val": 3, "test": 2})
    return featx.extract(root, out=root.parent / "colours.h5", **FAST).path


@pytest.mark.parametrize("model", list(featx.HEADS))
def test_fit_evaluates_each_split_and_writes_a_bundle(split_cache, model):
    r = featx.fit_head(split_cache, model=model, params={"n_neighbors": 3} if model == "knn" else None,
                       search=False)
    assert r.bundle == split_cache.with_suffix(f".{model}")
    assert {s: m["n"] for s, m in r.metrics.items()} == {"train": 12, "val": 6, "test": 4}
    assert r.metrics["val"]["accuracy"] == 1.0  # red vs blue: any head gets it
    assert (r.bundle / "bundle.json").is_file() and r.plots[0] == r.bundle / "confusion_val.png"
    for png in r.plots:  # the torch heads' training curves too
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(r.plots) == (2 if model in ("linear", "mlp") else 1)
    assert "val       n=6      accuracy=1.0000 (95% CI 0.610-1.000)" in summary(r)

    b = featx.load_bundle(r.bundle)
    fc = featx.open_cache(split_cache)
    assert b.classes == ["blue", "red"] and b.model == model and b.identity == fc.identity
    assert b.metrics == json.loads((r.bundle / "bundle.json").read_text())["metrics"]
    assert (b.predict_proba(fc.features).argmax(1) == fc.labels).all()


def test_a_pool_is_split_seeded_and_stratified(pool_folder):
    cache = featx.extract(pool_folder, **FAST).path
    a = featx.fit_head(cache, val_split=0.25, seed=3, search=False)
    assert {s: m["n"] for s, m in a.metrics.items()} == {"train": 9, "val": 3}
    assert featx.load_bundle(a.bundle).info["val_split"] == 0.25

    splits = np.array(["train"] * 12)
    labels = np.array([0, 1] * 6)
    one, two = (split_indices(splits, labels, 0.5, seed=3) for _ in range(2))
    assert np.array_equal(one["val"], two["val"]) and np.bincount(labels[one["val"]]).tolist() == [3, 3]


def test_out_chooses_the_bundle_folder(split_cache, tmp_path):
    r = featx.fit_head(split_cache, model="logistic", params={"C": 0.5}, out=tmp_path / "my model")
    assert r.search is None  # C given: nothing left to search
    assert r.bundle == tmp_path / "my model"
    assert featx.load_bundle(r.bundle).info["params"] == {"C": 0.5}


def test_one_class_is_refused(tmp_path):
    root = write_folder(tmp_path / "one", {"": 4}, classes={"red": (200, 50, 40)})
    cache = featx.extract(root, **FAST).path
    with pytest.raises(featx.DataError, match="the training data has 1 class"):
        featx.fit_head(cache)


def test_classes_of_one_image_each_leave_nothing_to_validate_on(tmp_path):
    root = write_folder(tmp_path / "few", {"": 1})
    cache = featx.extract(root, **FAST).path
    r = featx.fit_head(cache)  # each single image stays in train
    assert list(r.metrics) == ["train"] and r.plots[0].name == "confusion_train.png"
    assert r.search is None


@pytest.mark.parametrize("val_split", [1.5, -0.3, float("nan")])
def test_bad_val_split(split_cache, pool_folder, val_split):
    # Refused whatever the data, the cache with its own val split too: never "no validation".
    for cache in (featx.extract(pool_folder, **FAST).path, split_cache):
        with pytest.raises(featx.ConfigError, match=rf"^`val_split` must be 0 or more and below 1, "
                                                    rf"not {val_split}$"):
            featx.fit_head(cache, val_split=val_split)


@pytest.mark.parametrize("call", [lambda: featx.extract(""), lambda: featx.check(""),
                                  lambda: featx.classify("")])
def test_an_empty_folder_name_is_refused_not_taken_as_here(call):
    with pytest.raises(featx.DataError, match="^an empty name is no folder: give the image folder's path"):
        call()
