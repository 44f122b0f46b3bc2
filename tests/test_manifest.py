"""Labels from a manifest (``--labels FILE``): a flat folder and a table give what class folders
give; columns by their usual names or named; ids found by stem; a bad row recorded and passed
over, never ending the run; a bad table one line; labels edited without extracting again."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import featx
from featx.cli import main
from featx.data.manifest import Manifest, labelled

from conftest import FAST, QUIET, write_folder

QUICK = ["--workers", "0", "--no-progress", "--weights", "none", "--dtype", "float32"]


def flatten(folder: Path, flat: Path) -> list[tuple[str, str, str]]:
    """The class folders' images, all in ``flat/images/`` under new names; their (path, label, split)."""
    rows = []
    for image in sorted(folder.rglob("*.png")):
        split, label = image.relative_to(folder).parts[:2]
        name = f"images/{split}-{image.name}"
        (flat / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, flat / name)
        rows.append((name, label, split))
    return rows


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    base = tmp_path_factory.mktemp("flat")
    folders = write_folder(base / "colours", {"train": 6, "val": 3, "test": 2})
    rows = flatten(folders, base / "flat")
    return folders, base / "flat", write_csv(base / "flat" / "labels.csv", ["path", "label", "split"], rows)


def test_a_flat_folder_with_a_manifest_gives_what_its_class_folders_give(flat, tmp_path):
    folders, root, labels = flat
    by_folders = featx.open_cache(featx.extract(folders, out=tmp_path / "a.h5", dtype="float32", **FAST).path)
    made = featx.extract(root, labels=labels, out=tmp_path / "b.h5", dtype="float32", **FAST)
    by_manifest = featx.open_cache(made.path)
    assert made.n_refused == 0 and by_manifest.classes == by_folders.classes == ["blue", "red"]
    # The same images, renamed: the same label, split and features for each.
    renamed = {f"images/{p.split('/')[0]}-{p.split('/')[-1]}": i for i, p in enumerate(by_folders.paths)}
    order = [renamed[p] for p in by_manifest.paths]
    assert (by_manifest.labels == by_folders.labels[order]).all()
    assert (by_manifest.splits == by_folders.splits[order]).all()
    np.testing.assert_array_equal(by_manifest.features, by_folders.features[order])
    # The manifest is no part of what the features are: the same identity, the same cache name.
    assert by_manifest.identity == by_folders.identity
    assert featx.fit_head(made.path).metrics["val"] == featx.fit_head(tmp_path / "a.h5").metrics["val"]


def test_columns_are_found_by_their_usual_names_or_as_named_and_ids_by_their_stem(tmp_path):
    root = write_folder(tmp_path / "data", {"": 2})
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"Image": "blue/blue0", "Class": "sky", "Subset": "validation"},  # no extension: by stem
        {"Image": str(root / "red" / "red0.png"), "Class": 7, "Subset": "TRAIN"},  # absolute, inside
        {"Image": "red/red1.png", "Class": 7},  # no split: train
        {"Image": "blue1", "Class": "sky", "Subset": "test"},  # a bare stem, in a subfolder
    ]) + "\n\n")
    d = labelled(root, jsonl)
    assert d.classes == ("7", "sky") and d.refused == ()
    assert [(s.path.as_posix(), d.classes[s.label], s.split) for s in d.samples] == [
        ("red/red0.png", "7", "train"), ("red/red1.png", "7", "train"), ("blue/blue0.png", "sky", "val"),
        ("blue/blue1.png", "sky", "test")]
    named = write_csv(tmp_path / "named.csv", ["f", "breed", "id"], [["blue/blue1.png", "sky", "x"]])
    d = labelled(root, f"{named}:path=f,label=breed")
    assert [s.path.as_posix() for s in d.samples] == ["blue/blue1.png"] and d.classes == ("sky",)
    assert Manifest.parse("C:/m.csv") == Manifest(Path("C:/m.csv"))  # a colon of the path, no columns


def test_a_bad_row_is_recorded_and_passed_over_and_the_rest_extracted(tmp_path, capsys):
    root = write_folder(tmp_path / "data", {"": 10})
    featx_copy = root / "red" / "red0.jpg"
    featx_copy.write_bytes((root / "red" / "red0.png").read_bytes())  # red0 is now two files
    (root / "notes.txt").write_text("not an image")
    good = [[f"{c}/{c}{i}.png", c, "train" if i < 7 else "val"]
            for c in ("blue", "red") for i in range(1, 10)]
    bad = [["blue/gone.png", "blue", "train"],        # missing file
           ["red/red0", "red", "train"],               # a stem with two files
           ["../outside.png", "red", "train"],         # climbs out
           ["/etc/hostname", "red", "train"],          # absolute, outside
           ["notes.txt", "red", "train"],              # no image
           ["blue/blue0.png", "", "train"],            # empty label
           ["red/red1.png", "blue", "train"],          # red1 again, another label
           ["blue/blue2.png", "blue", "holdout"],      # another split name
           ["", "blue", "train"]]                      # no path
    labels = write_csv(tmp_path / "labels.csv", ["path", "label", "split"], good + bad)
    code = main(["extract", str(root), "--labels", str(labels), "--out", str(tmp_path / "c.h5"), *QUICK])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert "extracted 17 images (0 skipped, 10 manifest rows not used)" in out
    fc = featx.open_cache(tmp_path / "c.h5")
    why = dict(fc.failed)
    assert len(fc.failed) == 10 and len(fc.paths) == 17  # red1 is out, blue2 is in by its good row
    assert why["blue/gone.png"] == f"line 20 of labels.csv: no such file in {root}"
    assert why["red/red0"].startswith("line 21 of labels.csv: could be any of red/red0.jpg, red/red0.png")
    assert why["../outside.png"] == f"line 22 of labels.csv: climbs out of the data folder {root}"
    assert why["/etc/hostname"] == f"line 23 of labels.csv: outside the data folder {root}"
    assert why["notes.txt"] == "line 24 of labels.csv: not an image file"
    assert why["blue/blue0.png"] == "line 25 of labels.csv: an empty label"
    assert why["blue/blue2.png"].startswith("line 27 of labels.csv: the split 'holdout' is none of train")
    assert why["labels.csv:28"] == "line 28 of labels.csv: no path"
    assert [w for p, w in fc.failed if p == "red/red1.png"] == [
        f"line {n} of labels.csv: listed on lines 11 and 26 with other labels or splits" for n in (11, 26)]
    assert out.count("skipped ") == 10
    # check says the same before anything runs
    report = featx.check(root, labels=labels, workers=0, progress=False)
    assert sorted(report.skipped) == sorted(fc.failed)


def test_a_table_that_cannot_be_used_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "data", {"": 2})
    cases = {
        "nolabel.csv": ("file,kind\nblue/blue0.png,x\n", "has no label column (looked for label, class"),
        "named.csv:label=breed": ("path,label\nblue/blue0.png,x\n",
                                  "has no column 'breed' (it has 'path', 'label')"),
        "named.csv:colour=x": (None, "'colour' is not a manifest column to name; name path, label, split"),
        "missing.csv": (None, "cannot read the manifest"),
        "list.json": ('{"path": "blue/blue0.png"}', "is not a JSON list of objects"),
        "none.csv": ("path,label\nnothere.png,x\n", "no row of"),
        "binary.csv": (b"\xff\xfe\x00path", "cannot read the manifest"),
    }
    for spec, (content, message) in cases.items():
        name = spec.partition(":")[0]
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content is not None:
            (tmp_path / name).write_text(content)
        code = main(["extract", str(root), "--labels", str(tmp_path / spec), *QUICK])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and message in err, (spec, err)
    assert not (tmp_path / "cache").exists()


def test_editing_a_label_or_split_updates_the_cache_without_extracting_again(flat, tmp_path):
    _, root, labels = flat
    first = featx.extract(root, labels=labels, out=tmp_path / "c.h5", dtype="float32", **FAST)
    rows = list(csv.reader(labels.read_text().splitlines()))
    edited = [[p, "purple" if p.endswith("-blue0.png") else label, "test" if p.endswith("-red1.png") else s]
              for p, label, s in rows[1:]]
    again = featx.extract(root, labels=write_csv(tmp_path / "edited.csv", rows[0], edited),
                          out=tmp_path / "c.h5", dtype="float32", **FAST)
    assert again.n_extracted == 0 and again.n_reused == first.n_images and not again.up_to_date
    fc = featx.open_cache(again.path)
    assert fc.classes == ["blue", "purple", "red"]
    assert sorted(fc.paths[i] for i in np.flatnonzero(fc.labels == 1)) == [
        f"images/{s}-blue0.png" for s in ("test", "train", "val")]
    assert {fc.paths[i] for i in np.flatnonzero(fc.splits == "test")} >= {"images/train-red1.png"}
    with h5py.File(again.path) as f:  # the same features, in the file as written the first time
        assert f.attrs["config_key"] == h5py.File(first.path).attrs["config_key"]


def test_score_and_finetune_read_the_manifest_too(flat, tmp_path):
    _, root, labels = flat
    cache = featx.extract(root, labels=labels, out=tmp_path / "c.h5", dtype="float32", **FAST).path
    bundle = featx.fit_head(cache).bundle
    rows = list(csv.reader(labels.read_text().splitlines()))
    val = [r for r in rows[1:] if r[2] == "val"] + [["images/gone.png", "red", "val"],
                                                   ["images/train-red0.png", "green", ""]]
    listed = write_csv(tmp_path / "val.csv", ["path", "label", "split"], val)
    s = featx.score(root, bundle, labels=listed, out=tmp_path / "s.csv", runtime=QUIET)
    assert s.n_scored == 7 and s.n_failed == 0 and s.n_labelled == 6  # the green one is unlabelled...
    written = list(csv.DictReader(s.csv.read_text().splitlines()))
    assert len(written) == 8 and written[-1]["error"].startswith("line 8 of val.csv: no such file")
    assert sum(r["label"] == "" for r in written) == 2  # ... green is no class of the bundle
    tuned = featx.finetune(root, bundle, labels=labels, out=tmp_path / "tuned",
                           recipe=featx.Recipe(unfreeze="top:1", epochs=1), runtime=QUIET)
    assert tuned.history[0].val_accuracy == featx.load_bundle(bundle).metrics["val"]["accuracy"]
