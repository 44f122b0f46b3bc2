"""score(): a CSV row per image, accuracy where folders name classes, bad files listed."""

from __future__ import annotations

import csv
import json
import re

import pytest

import featx
from featx.cli.text import summary

from conftest import COLOURS, FAST, write_folder, write_image

# Scoring finds the random-init backbone from the bundle itself: no weights argument.
RUN = {k: v for k, v in FAST.items() if k != "weights"}

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 6, "val": 3})
    cache = featx.extract(root, out=root.parent / "c.h5", **FAST).path
    return featx.fit_head(cache).bundle


def test_a_labelled_folder_gets_accuracy_and_a_plot(bundle, tmp_path):
    new = write_folder(tmp_path / "new", {"": 3})
    write_image(new / "unsorted" / "x.png", COLOURS["red"])
    (new / "red" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    r = featx.score(new, bundle, **RUN)

    assert r.csv.resolve().parent == tmp_path / "cache" / "scores"
    assert re.fullmatch(rf"new-{re.escape(bundle.name)}-[0-9a-f]{{8}}\.csv", r.csv.name)
    assert (r.n_scored, r.n_failed, r.n_labelled, r.accuracy) == (7, 1, 6, 1.0)
    assert r.predicted == {"blue": 3, "red": 4}
    assert r.plot.is_file() and r.plot.suffix == ".png"
    with open(r.csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "predicted", "label", "p_blue", "p_red", "error"]
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == 8 and by_path["blue/blue0.png"]["predicted"] == "blue"
    assert by_path["unsorted/x.png"]["label"] == "" and by_path["unsorted/x.png"]["predicted"] == "red"
    assert by_path["red/bad.jpg"]["predicted"] == "" and by_path["red/bad.jpg"]["error"]
    assert abs(float(by_path["red/red1.png"]["p_red"]) + float(by_path["red/red1.png"]["p_blue"]) - 1) < 1e-5
    # write_folder draws the same noise as the training images': the head was fitted on them.
    assert "skipped red/bad.jpg: " in summary(r) and "all       n=6      accuracy=1.0000" in summary(r)
    assert r.n_fitted == 6 and "the head was fitted on all 6 labelled images" in summary(r)
    found = json.loads(r.csv.with_suffix(".metrics.json").read_text())
    assert found == r.metrics and found["n"] == 6 and found["confusion"] == [[3, 0], [0, 3]]


def test_scoring_a_folder_again_reads_only_the_images_it_has_not_seen(bundle, tmp_path):
    new = write_folder(tmp_path / "new", {"": 2})
    first = featx.score(new, bundle, out="first.csv", **RUN)
    assert first.features.path.parent.resolve() == tmp_path / "cache" / "scores"
    assert first.features.n_extracted == 4
    again = featx.score(new, bundle, out="again.csv", **RUN)
    assert again.features.up_to_date and again.features.path == first.features.path
    assert (tmp_path / "first.csv").read_text() == (tmp_path / "again.csv").read_text()
    write_image(new / "red" / "late.png", COLOURS["red"])
    late = featx.score(new, bundle, **RUN)
    assert (late.features.n_reused, late.features.n_extracted) == (4, 1)
    assert late.predicted == {"blue": 2, "red": 3}


def test_an_unlabelled_folder_has_no_label_column(bundle, tmp_path):
    write_image(tmp_path / "flat" / "a.png", COLOURS["blue"])
    r = featx.score(tmp_path / "flat", bundle, out=tmp_path / "out.csv", **RUN)
    assert r.accuracy is None and r.plot is None and r.csv == tmp_path / "out.csv"
    with open(r.csv) as f:
        assert next(csv.reader(f)) == ["path", "predicted", "p_blue", "p_red", "error"]


def test_a_bundle_whose_backbone_differs_is_refused(bundle, tmp_path):
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["backbone"]["preprocessing"]["resize_size"] = 300
    (tmp_path / "b").mkdir()
    for f in bundle.iterdir():
        (tmp_path / "b" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(doc))
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(featx.BundleError, match="was fitted on features with preprocessing=.*'resize_size': "
                                                "300.*but the backbone loaded now has preprocessing="):
        featx.score(tmp_path / "flat", tmp_path / "b", **RUN)


def test_not_a_bundle(tmp_path):
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(featx.BundleError, match=re.escape(f"{tmp_path} is not a featx model bundle (no")):
        featx.score(tmp_path / "flat", tmp_path, **RUN)


def test_an_empty_folder(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(featx.DataError, match="no images found in .*empty"):
        featx.score(tmp_path / "empty", bundle, **RUN)


def test_scoring_computes_features_in_the_precision_the_bundle_was_fitted_on(bundle, tmp_path,
                                                                             monkeypatch):
    from featx.extraction.execution import cpu

    b = featx.load_bundle(bundle)
    fitted_on = featx.open_cache(b.info["cache"]).attrs["dtype"]
    assert b.dtype == fitted_on
    new = write_folder(tmp_path / "new", {"": 1})
    r = featx.score(new, bundle, **RUN)
    assert r.features.dtype == b.dtype and "fitted on" in r.features.why_dtype
    # A bundle of bfloat16 features where this CPU has none: one line, and float32 on request.
    b.dtype = "bfloat16"
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    with pytest.raises(featx.ConfigError, match=r"fitted on bfloat16 features.*`dtype` float32"):
        featx.score(new, b, **RUN)
    assert featx.score(new, b, dtype="float32", **RUN).features.dtype == "float32"


def test_an_earlier_bundle_without_a_dtype_is_float32(bundle, tmp_path):
    import shutil

    old = shutil.copytree(bundle, tmp_path / "old")
    doc = json.loads((old / "bundle.json").read_text())
    del doc["dtype"]
    (old / "bundle.json").write_text(json.dumps(doc))
    assert featx.load_bundle(old).dtype == "float32"


def test_score_says_which_images_the_head_was_fitted_on_and_gives_the_held_out_figure_apart(tmp_path):
    root = tmp_path / "colours"
    for k, (split, n) in enumerate({"train": 6, "val": 3, "test": 2}.items()):  # no two images alike
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(n):
                write_image(root / split / name / f"{name}{i}.png", colour, seed=100 * k + 10 * c + i)
    cache = featx.extract(root, out=tmp_path / "c.h5", **FAST).path
    refit = featx.fit_head(cache).bundle  # searched, then fitted again on train+val
    alone = featx.fit_head(cache, search=False, out=tmp_path / "alone").bundle  # on train only

    val = featx.score(root / "val", refit, out=tmp_path / "v.csv", **RUN)
    assert (val.n_labelled, val.n_fitted, val.held_out) == (6, 6, None)
    assert "the head was fitted on all 6 labelled images" in summary(val)
    assert re.search(r"^all +n=6 .*\(not held out\)", summary(val), re.M)
    # The whole folder: train and val were fitted on, test is held out.
    whole = featx.score(root, refit, out=tmp_path / "w.csv", **RUN)
    assert (whole.n_labelled, whole.n_fitted, whole.held_out["n"]) == (22, 18, 4)
    assert json.loads(whole.csv.with_suffix(".metrics.json").read_text())["held_out"]["n"] == 4
    assert re.search(r"^held-out +n=4 ", summary(whole), re.M)
    # By their bytes: a copy under another name is still an image the head was fitted on.
    copied = tmp_path / "copied" / "red"
    copied.mkdir(parents=True)
    (copied / "renamed.png").write_bytes((root / "val" / "red" / "red0.png").read_bytes())
    assert featx.score(copied.parent, refit, out=tmp_path / "c.csv", **RUN).n_fitted == 1
    # Fitted on train alone, val is held out, and the figures are as ever.
    held = featx.score(root / "val", alone, out=tmp_path / "a.csv", **RUN)
    assert held.n_fitted == 0 and held.held_out == held.metrics and "held out" not in summary(held)


def test_a_bundle_that_records_no_fitted_images_is_scored_as_before(bundle, tmp_path):
    import shutil

    old = shutil.copytree(bundle, tmp_path / "old")
    doc = json.loads((old / "bundle.json").read_text())
    del doc["files"]["fitted_images.u64"]
    (old / "fitted_images.u64").unlink()
    (old / "bundle.json").write_text(json.dumps(doc))
    r = featx.score(write_folder(tmp_path / "new", {"": 2}), old, **RUN)
    assert r.n_fitted == 0 and r.n_labelled == 4 and featx.load_bundle(old).fitted_images() is None
