"""The probe search: settings tried on validation, the best kept and fitted again on train+val,
seeded; and what it leaves in the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import featx
from featx.cli.text import summary
from featx.evaluation import read_predictions
from featx.fitting.search import GRIDS, grid


def _blobs(path, n_classes=4, per_class=40, dim=16, seed=0, splits=None):
    """Overlapping Gaussian blobs: the regularisation matters, and no setting is perfect."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    features = (centres[labels] + rng.normal(0, 1.5, (len(labels), dim))).astype(np.float32)
    return featx.write_cache(path, features, labels, [f"class{c}" for c in range(n_classes)],
                             splits=splits)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return _blobs(tmp_path_factory.mktemp("search") / "blobs.h5")


def test_search_is_the_default_on_a_small_cache_and_refits_on_train_and_val(blobs, tmp_path):
    r = featx.fit_head(blobs, out=tmp_path / "b")
    trials = r.search.trials
    assert [t.params["C"] for t in trials][:6] == sorted(t.params["C"] for t in trials)[:6]
    assert {c for c in GRIDS["logistic"][0]["C"]} <= {t.params["C"] for t in trials}
    assert len(trials) == 6 + 4  # the coarse sweep, then two finer rounds of two
    best = max(trials, key=lambda t: (t.metrics["accuracy"], -t.metrics["loss"]))
    assert r.search.best is best
    default = next(t for t in trials if t.params["C"] == 0.1)  # the head's own default
    assert best.metrics["accuracy"] >= default.metrics["accuracy"]
    # val is the chosen setting's on held-out images; the head kept learned from both splits
    assert list(r.metrics) == ["train+val", "val"]
    assert r.metrics["val"] == best.metrics and r.metrics["train+val"]["n"] == 160
    b = featx.load_bundle(r.bundle)
    assert b.info["fitted_on"] == "train+val" and b.info["params"] == best.params
    assert b.info["search"]["chosen"] == best.params and len(b.info["search"]["trials"]) == 10
    assert best.params["C"] == b.head[-1].C
    held = read_predictions(r.bundle / "predictions.csv", b.classes)
    assert list(held) == ["val"] and len(held["val"].paths) == r.metrics["val"]["n"]
    assert "<- chosen" in summary(r) and "chosen on val: C=" in summary(r)
    for png in r.plots:
        with Image.open(png) as im:
            im.load()
            assert im.width > 100
    assert [p.name for p in r.plots] == ["confusion_val.png", "search.png"]


def test_the_search_is_seeded(blobs, tmp_path):
    one = featx.fit_head(blobs, model="linear", params={"epochs": 3}, out=tmp_path / "one")
    two = featx.fit_head(blobs, model="linear", params={"epochs": 3}, out=tmp_path / "two")
    assert [t.to_dict() | {"seconds": 0} for t in one.search.trials] == \
        [t.to_dict() | {"seconds": 0} for t in two.search.trials]
    assert one.search.best.params == two.search.best.params
    assert [t.params["weight_decay"] for t in one.search.trials] == GRIDS["linear"][0]["weight_decay"]
    assert (one.bundle / "history.png").is_file()  # the chosen setting's training curves
    curve = one.search.best.history
    assert len(curve) == 3 and {"train_loss", "val_loss", "val_accuracy"} <= set(curve[0])


def test_no_search_and_fixed_parameters(blobs, tmp_path):
    plain = featx.fit_head(blobs, search=False, out=tmp_path / "plain")
    assert plain.search is None and list(plain.metrics) == ["train", "val"]
    assert json.loads((plain.bundle / "bundle.json").read_text())["fitted_on"] == "train"
    fixed = featx.fit_head(blobs, params={"C": 0.5}, out=tmp_path / "fixed")  # nothing left to search
    assert fixed.search is None and featx.load_bundle(fixed.bundle).head[-1].C == 0.5
    knn = featx.fit_head(blobs, model="knn", out=tmp_path / "knn")
    assert [t.params["n_neighbors"] for t in knn.search.trials] == GRIDS["knn"][0]["n_neighbors"]


def test_a_large_cache_is_fitted_without_a_search_unless_asked_but_by_logistic(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr("featx.fitting.fit.AUTO_SEARCH_VALUES", 100)
    assert featx.fit_head(blobs, model="knn", out=tmp_path / "a").search is None
    assert featx.fit_head(blobs, model="knn", search=True, out=tmp_path / "b").search is not None
    # The logistic head's settings are trained together, for about one fit: it searches anyway.
    assert featx.fit_head(blobs, out=tmp_path / "c").search is not None


def test_few_images_of_many_classes_need_no_flag(tmp_path, caplog):
    """2-4 training images a class, 30 classes, one class with a single image: the default holds
    out one image of each class that has two or more, and says so."""
    rng = np.random.default_rng(0)
    counts = [1] + [int(rng.integers(2, 5)) for _ in range(29)]
    labels = np.repeat(np.arange(30), counts)
    centres = rng.normal(0, 3, (30, 8))
    features = (centres[labels] + rng.normal(0, 1, (len(labels), 8))).astype(np.float32)
    cache = featx.write_cache(tmp_path / "few.h5", features, labels, [f"breed{i}" for i in range(30)])
    with caplog.at_level("INFO", logger="featx"):
        r = featx.fit_head(cache)
    assert "1 class(es) have a single training image: kept in train" in caplog.text
    assert "at least one of each class" in caplog.text
    assert r.metrics["val"]["n"] == 29 and r.metrics["val"]["accuracy"] > 0.5


def test_tensorboard_logs_a_torch_heads_epochs(blobs, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    featx.fit_head(blobs, model="linear", params={"epochs": 3, "weight_decay": 0.0},
                   tensorboard=tmp_path / "tb", out=tmp_path / "b")
    logged = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in logged.Scalars("loss/train")] == [1, 2, 3]
    assert {"loss/val", "accuracy/val"} <= set(logged.Tags()["scalars"])
    assert logged.Tags()["images"] == ["confusion"]
    with pytest.raises(featx.ConfigError, match="a logistic head has none: leave it out"):
        featx.fit_head(blobs, tensorboard=tmp_path / "tb2", out=tmp_path / "c")
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(featx.ConfigError, match=r"pip install 'featx\[tensorboard\]'"):
        featx.fit_head(blobs, model="linear", tensorboard=tmp_path / "tb3", out=tmp_path / "d")
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.parametrize("model", list(GRIDS))
def test_every_heads_default_is_among_the_settings_searched(model):
    """What makes the search never worse than the default on validation."""
    defaults = featx.make_head(model).get_params()
    default = {name: next(v for k, v in defaults.items() if k == name or k.endswith(f"__{name}"))
               for name in GRIDS[model][0]}
    assert default in grid(model, {})[0]


def test_small_caches_and_rare_classes(tmp_path):
    small = _blobs(tmp_path / "small.h5", n_classes=2, per_class=10)
    knn = featx.fit_head(small, model="knn", out=tmp_path / "knn")  # 16 training images
    assert [t.params["n_neighbors"] for t in knn.search.trials] == [1, 3, 5, 10]
    with pytest.raises(featx.ConfigError, match="none are held out"):
        featx.fit_head(small, search=True, val_split=0, out=tmp_path / "none")
    labels = np.array([0] * 10 + [1] * 2)  # class1: one image to train on, one to validate
    rare = featx.write_cache(tmp_path / "rare.h5", np.random.default_rng(0).normal(size=(12, 4)),
                             labels, ["common", "rare"])
    with pytest.raises(featx.DataError, match="the svm head needs 3 training images of each class, "
                                              "and rare have fewer: use `model` logistic"):
        featx.fit_head(rare, model="svm", out=tmp_path / "svm")
    (tmp_path / "file").write_text("")
    with pytest.raises(featx.ConfigError, match="is a file, and TensorBoard logs go in a folder"):
        featx.fit_head(small, model="linear", tensorboard=tmp_path / "file", out=tmp_path / "tb")
