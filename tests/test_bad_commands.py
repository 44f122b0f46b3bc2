"""Every bad input a new user might give, on the command line and through the Python API: one
line on stderr naming the file or value, exit status 1, no traceback, and nothing already
computed lost (the cache and bundle made before are byte for byte as they were)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import featx
from featx.cache import lock as lock_mod
from featx.cli import main
from featx.util.files import sha256_file

from conftest import FAST, QUIET, write_folder

QUICK = ["--workers", "0", "--no-progress", "--weights", "none"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A folder, its cache and a bundle: what a user has already computed."""
    base = tmp_path_factory.mktemp("made")
    data = write_folder(base / "colours", {"train": 4, "val": 2})
    cache = featx.extract(data, out=base / "colours.h5", **FAST).path
    bundle = featx.fit_head(cache).bundle
    return data, cache, bundle


def _sums(*paths: Path) -> dict:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {f: sha256_file(f) for f in files if f.is_file()}


def _bundle_json(edit):
    def make(tmp: Path, _data, _cache, bundle: Path) -> Path:
        copy = shutil.copytree(bundle, tmp / "edited")
        doc = json.loads((copy / "bundle.json").read_text())
        (copy / "bundle.json").write_text(json.dumps(edit(doc)))
        return copy
    return make


def _cache_h5(edit):
    def make(tmp: Path, _data, cache: Path, _bundle) -> Path:
        copy = tmp / "edited.h5"
        shutil.copy(cache, copy)
        with h5py.File(copy, "r+") as f:
            edit(f)
        return copy
    return make


def _truncated_head(at: int):
    def make(tmp: Path, _data, _cache, bundle: Path) -> Path:
        copy = shutil.copytree(bundle, tmp / "cut")
        head = copy / "head.safetensors"
        head.write_bytes(head.read_bytes()[:at])
        return copy
    return make


def _file(tmp: Path, *_) -> Path:
    (tmp / "file").write_text("not a folder")
    return tmp / "file"


def _folder(tmp: Path, *_) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    return tmp / "mine"


def _h5_folder(tmp: Path, *_) -> Path:
    (tmp / "dir.h5").mkdir()
    return tmp / "dir.h5"


def _weights(content: bytes | dict):
    def make(tmp: Path, *_) -> Path:
        path = tmp / "w.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        return path
    return make


def _unrelated_h5(tmp: Path, *_) -> Path:
    with h5py.File(tmp / "precious.h5", "w") as f:
        f["results"] = np.arange(3)
    return tmp / "precious.h5"


def _other_folders_cache(tmp: Path, _data, cache: Path, _bundle) -> Path:
    shutil.copy(cache, tmp / "other.h5")
    return tmp / "other.h5"


def _all_skipped(tmp: Path, *_) -> Path:
    data = tmp / "unreadable"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        (data / cls / "x.jpg").write_text("not an image")
    return featx.extract(data, out=tmp / "none.h5", **FAST).path


# (id, what to make first: f(tmp, data, cache, bundle) -> X, or None; the arguments, with {X},
# {data}, {cache}, {bundle}, {tmp} filled in; what stderr's one line must say, {X} filled in)
CASES = [
    ("workers", None, "extract {data} --workers -1", "--workers must be 0 or more, not -1"),
    ("batch-size", None, "extract {data} --batch-size 0", "--batch-size must be at least 1, not 0"),
    ("a Ray setting, locally", None, "score {data} --model {bundle} --address head:6379",
     "--address is a setting of the Ray engine: add --engine ray, or leave it out"),
    ("Ray address unanswered", None, "extract {data} --engine ray --workers 1 --address 127.0.0.1:1",
     "cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused): check --address"),
    ("block-size", None, "extract {data} --engine ray --block-size 0",
     "--block-size must be at least 1, not 0"),
    ("C not a number", None, "fit-head {cache} -p C=abc",
     "the logistic head cannot be fitted with -p C=abc (InvalidParameterError: The 'C' parameter"),
    ("C negative", None, "fit-head {cache} -p C=-1", "the logistic head cannot be fitted with -p C=-1"),
    ("hidden", None, "fit-head {cache} --model mlp -p hidden=abc",
     "hidden must be a whole number, 0 or more, not 'abc'"),
    ("lr", None, "fit-head {cache} --model linear -p lr=-1", "lr must be a number above 0, not -1"),
    ("n_neighbors", None, "fit-head {cache} --model knn -p n_neighbors=500",
     "the knn head cannot be fitted with -p n_neighbors=500 (ValueError: Expected n_neighbors <= "),
    ("garbage weights", _weights(b"\x89 garbage " * 50), "extract {data} --weights {X}",
     "cannot read weights from {X} (UnpicklingError: "),
    ("other model's weights", _weights({"fc.weight": torch.zeros(2, 2)}), "extract {data} --weights {X}",
     "{X} is not a state dict of efficientnet_lite0 (RuntimeError: Error(s) in loading state_dict"),
    ("extract --out a .h5 folder", _h5_folder, "extract {data} --out {X}", "--out {X} is a folder"),
    ("extract --out under a file", _file, "extract {data} --out {X}/x.h5",
     "cannot write {X} ("),
    ("extract over a file not a cache", _unrelated_h5, "extract {data} --out {X}",
     "{X} is not a featx cache, and extracting there would replace it: choose another --out, or add "
     "--force to replace it"),
    ("extract over another folder's cache", _other_folders_cache, "extract {tmp}/new --out {X}",
     "{X} is the cache of another image folder (colours), and extracting there would replace it"),
    ("fit-head --out a folder", _folder, "fit-head {cache} --out {X}",
     "{X} is a folder that is not a featx bundle, and writing one there would replace it"),
    ("fit-head --out a file", _file, "fit-head {cache} --out {X}", "{X} is a file, and a bundle is a folder"),
    ("fit-head --out under a file", _file, "fit-head {cache} --out {X}/b",
     "cannot write {X} (File exists): choose another --out"),
    ("score --out a folder", _folder, "score {data} --model {bundle} --out {X}",
     "--out {X} is a folder: give the CSV file's path"),
    ("score --out under a file", _file, "score {data} --model {bundle} --out {X}/s.csv",
     "cannot make the folder for {X}/s.csv (File exists)"),
    ("bundle.json without backbone", _bundle_json(lambda d: {k: v for k, v in d.items() if k != "backbone"}),
     "score {data} --model {X}", "{X}/bundle.json has no backbone: it is damaged"),
    ("bundle.json without classes", _bundle_json(lambda d: {k: v for k, v in d.items() if k != "classes"}),
     "score {data} --model {X}", "{X}/bundle.json has no classes: it is damaged"),
    ("bundle.json a list", _bundle_json(lambda d: [d]), "score {data} --model {X}",
     "{X}/bundle.json is not a featx bundle.json (not a JSON object)"),
    ("bundle.json empty backbone", _bundle_json(lambda d: {**d, "backbone": {}}), "score {data} --model {X}",
     "{X}/bundle.json is damaged (backbone.backbone is missing)"),
    *[(f"head cut at {at}", _truncated_head(at), "score {data} --model {X}",
       "{X}/head.safetensors: ") for at in (0, 10, 100, 1000)],
    ("cache without labels", _cache_h5(lambda f: f.__delitem__("labels")), "fit-head {X}",
     "{X} is damaged (/labels is missing)"),
    ("cache without backbone", _cache_h5(lambda f: f.attrs.__delitem__("backbone")), "fit-head {X}",
     "{X} is damaged (attribute.backbone is missing)"),
    ("cache label out of range", _cache_h5(lambda f: f["labels"].__setitem__(0, 7)), "fit-head {X}",
     "{X} is damaged (ValueError: a label out of the range of its 2 classes)"),
    ("every image skipped", _all_skipped, "fit-head {X}",
     "{X} holds no features: all 2 of its images were skipped as unreadable"),
]


@pytest.mark.parametrize("name, make, command, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_exit_1_and_nothing_is_lost(made, tmp_path, capsys, name, make,
                                                                  command, message):
    data, cache, bundle = made
    write_folder(tmp_path / "new", {"": 1})
    made_first = make(tmp_path, data, cache, bundle) if make else None
    fill = dict(X=made_first, data=data, cache=cache, bundle=bundle, tmp=tmp_path)
    before = _sums(cache, bundle, tmp_path)
    argv = command.format(**fill).split()
    quick = {"extract": QUICK, "score": QUICK[:3]}.get(argv[0], [])
    argv = [argv[0], *quick, *argv[1:]]  # the case's own options come later, and win
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("featx: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.format(**fill) in lines[0]
    assert _sums(cache, bundle, tmp_path) == before  # nothing made before was touched


def test_a_folder_this_user_may_not_write_is_one_line(made, monkeypatch, capsys):
    data, _, _ = made

    def refused(lock, _path, _error):
        raise PermissionError(13, "Permission denied", str(lock))

    monkeypatch.setattr(lock_mod, "_acquire", refused)  # as root, the kernel would not refuse
    assert main(["extract", str(data), "--out", "ro/x.h5", *QUICK]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "featx: error: cannot write ro/x.h5.lock (Permission denied): choose another --out")


def test_the_python_api_raises_the_same_featx_errors(made, tmp_path):
    data, cache, bundle = made
    with pytest.raises(featx.ConfigError, match="the logistic head cannot be fitted with -p C=abc"):
        featx.fit_head(cache, params={"C": "abc"}, out=tmp_path / "b")
    with pytest.raises(featx.CacheError, match="is damaged"):
        featx.open_cache(_cache_h5(lambda f: f.__delitem__("labels"))(tmp_path, data, cache, bundle))
    with pytest.raises(featx.BundleError, match="has no classes"):
        featx.load_bundle(_bundle_json(lambda d: {k: v for k, v in d.items() if k != "classes"})(
            tmp_path, data, cache, bundle))
    with pytest.raises(featx.ConfigError, match="`workers` must be 0 or more"):
        featx.Runtime(workers=-1)


def test_scoring_a_folder_of_only_unreadable_files_writes_the_csv_of_errors(made, tmp_path):
    _, _, bundle = made
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("a.jpg", "=cmd.jpg"):
        (folder / name).write_text("not an image")
    r = featx.score(folder, bundle, out=tmp_path / "s.csv", runtime=QUIET)
    assert (r.n_scored, r.n_failed) == (0, 2)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "path,predicted,p_blue,p_red,error" and len(rows) == 3
    # A name a spreadsheet would run as a formula is written as text.
    assert rows[1].startswith("'=cmd.jpg,,,,\"UnidentifiedImageError") and rows[2].startswith("a.jpg,,,,")


def test_two_folders_of_the_same_name_get_their_own_csv(made, tmp_path):
    _, _, bundle = made
    csvs = [featx.score(write_folder(tmp_path / side / "val", {"": 1}), bundle, runtime=QUIET).csv
            for side in ("a", "b")]
    assert csvs[0] != csvs[1] and all(c.is_file() and c.name.startswith("val-") for c in csvs)


def test_a_link_to_another_class_is_skipped_with_a_warning(tmp_path, caplog):
    data = write_folder(tmp_path / "d", {"": 2})
    (data / "red" / "blue_really.png").symlink_to(data / "blue" / "blue0.png")
    dataset = featx.scan(data)
    assert [s.path.as_posix() for s in dataset.samples if s.path.name == "blue_really.png"] == []
    assert dataset.ignored == (("red/blue_really.png", "a link to an image of class blue: skipped, as "
                                                       "its class is ambiguous"),)
    assert any("blue_really.png: a link to an image of class blue" in m for m in caplog.messages)
