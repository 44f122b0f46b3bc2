"""Hostile input (issue 31): files crafted to cost memory, to redirect writes, to replace what a
run reads, or to crash featx, each end in one line or are handled as documented."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featx
from featx.cache.lock import lock_path
from featx.cli import main
from featx.finetuning import checkpoint, loop
from featx.util.files import sha256_file

from conftest import FAST, QUIET, write_folder, write_image

QUICK = ["--workers", "0", "--no-progress", "--weights", "none"]
# One step an epoch on tiny data, no mixing, the fine-tuned model kept whatever its gain.
TUNE = {"recipe": featx.Recipe(unfreeze="top:1", epochs=1, keep="finetuned", mix=False), "runtime": QUIET}

# Extract, the device's crop and fine-tuning's plain crop of 118-byte PNGs of 1×12000 px, in a
# process of their own so that its peak memory is theirs; it prints that peak in MB.
_ELONGATED = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    import featx
    from featx.backbones.preprocessing import Preprocessing
    from featx.data.augmentation import train_transform
    from featx.data.device_decode import _crop
    from featx.data.images import load_rgb
    root = Path(sys.argv[1])
    # Eager: an exported runtime's own start-up would be measured too.
    found = featx.extract(root, out=root.parent / "x.h5", weights="none", dtype="float32",
                          runtime=featx.Runtime(workers=0, progress=False, execution="eager"))
    assert (found.n_images, found.n_failed) == (2, 0), found
    p = Preprocessing(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert _crop(torch.zeros(3, 1, 12000, dtype=torch.uint8), 1, p).shape == (3, 224, 224)
    image = load_rgb(next(root.rglob("*.png")))
    assert train_transform(p, ["flip"])(image).shape == (3, 224, 224)
    # VmHWM, this program's own peak: ru_maxrss also counts the pytest process it was forked from
    with open("/proc/self/status") as f:
        print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024)
""")


def test_tiny_files_of_huge_aspect_cost_bounded_memory(tmp_path):
    for name, size in (("wide", (12000, 1)), ("tall", (1, 12000))):
        path = tmp_path / "data" / "c" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 50, 40)).save(path, optimize=True)
        assert path.stat().st_size < 200
    r = subprocess.run([sys.executable, "-c", _ELONGATED, str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # Importing torch and building the model is ~0.8 GB; resizing these whole cost 7.6 GB.
    assert int(r.stdout.split()[-1]) < 1500


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(data folder, a logistic bundle, a bundle fine-tuned from it for one epoch)."""
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 4, "val": 2})
    bundle = featx.fit_head(featx.extract(root, out=root.parent / "colours.h5", **FAST).path).bundle
    out = root.parent / "tuned"
    featx.finetune(root, bundle, out=out, **TUNE)
    return root, bundle, out


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_second_finetune_leaves_the_first_whole_until_it_is_done(tuned, monkeypatch):
    root, bundle, out = tuned
    before = _contents(out)

    def killed(*args, **kwargs):  # the second run, stopped in its first epoch
        assert _contents(out) == before  # its epoch 0 is written, but elsewhere
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        featx.finetune(root, bundle, out=out, **TUNE)
    assert _contents(out) == before
    featx.load_bundle(out)
    assert (checkpoint.state_folder(out) / checkpoint.CHECKPOINT).is_file()
    monkeypatch.undo()
    featx.finetune(root, bundle, out=out, resume=True, **TUNE)
    assert _contents(out) != before and not checkpoint.state_folder(out).exists()
    featx.load_bundle(out)


def test_a_bundle_being_written_is_refused_to_another_writer(tuned, tmp_path, monkeypatch):
    root, bundle, out = tuned
    # refused before any work, not only as it would write
    monkeypatch.setattr("featx.fitting.fit.evaluate", lambda *a: pytest.fail("fitted"))
    before = _contents(out)
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)  # as another process holding it would
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        for write in (lambda: featx.finetune(root, bundle, out=out, **TUNE),
                      lambda: featx.fit_head(featx.load_bundle(bundle).info["cache"], out=out),
                      lambda: featx.load_bundle(bundle).save(out)):
            with pytest.raises(featx.BundleError, match=rf"^{re.escape(str(out))} is being written by "
                                                        r"another featx process \(pid 4242\): wait"):
                write()
    finally:
        os.close(fd)
    assert _contents(out) == before and not checkpoint.state_folder(out).exists()


def test_a_planted_link_at_a_temporary_name_is_never_written_through(tuned, tmp_path):
    _, bundle, _ = tuned
    secret = tmp_path / "secret.txt"
    secret.write_text("mine")
    (bundle / "report.html.tmp").symlink_to(secret)
    try:
        featx.report(bundle)
    finally:
        (bundle / "report.html.tmp").unlink(missing_ok=True)
    assert secret.read_text() == "mine"
    assert (bundle / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_links_planted_beside_a_cache_are_refused_not_followed(tuned, tmp_path, capsys):
    root, _, _ = tuned
    secret = tmp_path / "secret.txt"
    secret.write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("x.tmp", "shard-000001.npz"):
        (other / name).write_text("someone else's")
    out = tmp_path / "x.h5"
    Path(f"{out}.lock").symlink_to(secret)
    assert main(["extract", str(root), "--out", str(out), *QUICK]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"featx: error: cannot write {out}.lock (Too many levels of symbolic links): choose another --out")
    Path(f"{out}.lock").unlink()
    Path(f"{out}.partial").symlink_to(other)
    assert main(["extract", str(root), "--out", str(out), *QUICK]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"featx: error: {out}.partial, where the unfinished extraction of {out} is kept, cannot be "
        f"used (a symbolic link, which featx never makes): remove it, or choose another --out")
    assert secret.read_text() == "mine" and not out.exists()
    assert sorted(p.name for p in other.iterdir()) == ["shard-000001.npz", "x.tmp"]


def test_out_never_replaces_a_run_input_nor_a_file_featx_did_not_write(tuned, tmp_path, capsys):
    root, bundle, _ = tuned
    before = _contents(bundle)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    quick = ["--workers", "0", "--no-progress"]
    for argv, line in (
            (["score", str(root / "val"), "--model", str(bundle), "--out", str(bundle / "head.safetensors")],
             f"--out {bundle}/head.safetensors would replace {bundle}/head.safetensors, which this run "
             f"reads: choose another --out"),
            (["score", str(root / "val"), "--model", str(bundle), "--out", str(notes)],
             f"{notes} is not a file featx wrote, and this run's --out would replace it: choose "
             f"another --out, or add --force to replace it"),
            (["report", str(bundle), "--out", str(bundle / "bundle.json")],
             f"--out {bundle}/bundle.json would replace {bundle}/bundle.json, which this run reads"),
            (["report", str(bundle), "--out", str(notes)], f"{notes} is not a file featx wrote")):
        assert main([argv[0], *(quick if argv[0] == "score" else []), *argv[1:]]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"featx: error: {line}"), err
    assert _contents(bundle) == before and notes.read_text() == "mine"
    # What featx wrote it replaces; anything else only when told to.
    assert main(["report", str(bundle), "--out", str(notes), "--force"]) == 0
    assert main(["report", str(bundle), "--out", str(notes)]) == 0


def _features_from(other: str, virtual: bool):
    """A cache edit: its /features read from the file ``other``, by a link or a virtual dataset."""
    def edit(f: h5py.File) -> None:
        shape, dtype = f["features"].shape, f["features"].dtype
        del f["features"]
        if virtual:
            layout = h5py.VirtualLayout(shape, dtype)
            layout[:] = h5py.VirtualSource(other, "features", shape)
            f.create_virtual_dataset("features", layout)
        else:
            f["features"] = h5py.ExternalLink(other, "/features")
    return edit


@pytest.mark.parametrize("virtual", [False, True], ids=["external link", "virtual dataset"])
def test_a_cache_reading_another_file_is_refused(tuned, tmp_path, capsys, virtual):
    root, _, _ = tuned
    cache = shutil.copy(root.parent / "colours.h5", tmp_path / "crafted.h5")
    with h5py.File(cache, "r") as f, h5py.File(tmp_path / "other.h5", "w") as other:
        other["features"] = np.ones(f["features"].shape, f["features"].dtype)
    with h5py.File(cache, "r+") as f:
        _features_from(str(tmp_path / "other.h5"), virtual)(f)
    assert main(["fit-head", str(cache), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.splitlines()
    kind = "a virtual dataset" if virtual else f"an external link to {str(tmp_path / 'other.h5')!r}"
    assert err == [f"featx: error: {cache} reads data from other files (/features is {kind}), which no "
                   f"featx cache does: extract it again"]
    assert not (tmp_path / "b").exists()


def test_rows_of_predictions_csv_outside_the_data_folder_are_never_read(tuned, tmp_path, monkeypatch):
    from featx.reporting import report as report_mod

    root, bundle, _ = tuned
    secret = write_image(tmp_path / "secret.png")
    opened = []
    monkeypatch.setattr(report_mod, "load_rgb", lambda p: opened.append(Path(p)) or featx.load_rgb(p))
    preprocessing = report_mod.Preprocessing.from_dict(featx.load_bundle(bundle).identity.preprocessing)
    found = report_mod._Images(root, preprocessing)
    inside = next(p.relative_to(root).as_posix() for p in sorted(root.rglob("*.png")))
    climbing = os.path.relpath(secret, root)
    _, kept = found.crops([str(secret), climbing, inside])
    assert kept == [2] and opened == [root / inside]


def _one_line(capsys, argv: list[str]) -> str:
    """The command's one line on stderr, asserted to be its only error line, with exit 1 and no
    traceback."""
    assert main(argv) == 1, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("featx: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("featx: error: ")


def _edited_bundle(bundle: Path, tmp: Path, edit, text: str = "") -> Path:
    """A copy of ``bundle`` whose bundle.json ``edit(doc)`` changed (``text``: JSON put in as it
    is, under "extra", where Python's json could not write it)."""
    copy = shutil.copytree(bundle, tmp / "crafted")
    doc = json.loads((copy / "bundle.json").read_text())
    edit(doc)
    written = json.dumps(doc)
    (copy / "bundle.json").write_text(written[:-1] + f', "extra": {text}}}' if text else written)
    return copy


def _set(path: str, value):
    """An edit setting the field ``a.b.c`` of bundle.json to ``value``."""
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return edit


# (id, edit of bundle.json, JSON text added as is, what the one line says after "bundle.json ")
CRAFTED_BUNDLES = [
    ("nested 5,000 deep", lambda d: None, "[" * 5000 + "]" * 5000, "(nests deeper than 32 levels)"),
    ("nested 40 deep", lambda d: None, "[" * 40 + "]" * 40, "(nests deeper than 32 levels)"),
    ("a number of 5,000 digits", lambda d: None, "1" * 5000, "(not JSON (Exceeds the limit"),
    ("feature_dim out of range", _set("backbone.feature_dim", 10**12), "",
     "is damaged (backbone.feature_dim is 1000000000000, not a whole number from 1 to 1048576)"),
    ("resize of a billion pixels", _set("backbone.preprocessing.resize_size", 10**9), "",
     "is damaged (backbone.preprocessing.resize_size is 1000000000, not a whole number"),
    ("n a float", _set("metrics.val.n", 1e30), "",
     "is damaged (metrics.val.n is 1e+30, not a whole number"),
    ("accuracy a text", _set("metrics.val.accuracy", "high"), "",
     "is damaged (metrics.val.accuracy is 'high', not a number from 0 to 1)"),
    ("classes a text", _set("classes", "ab"), "", "is damaged (classes is 'ab', not a list)"),
    ("metrics a list", _set("metrics", []), "", "is damaged (metrics is [], not an object)"),
    ("trainable a text", _set("trainable", "many"), "",
     "is damaged (trainable is 'many', not a whole number"),
    ("a seed past 64 bits", _set("seed", 2**70), "",
     "is damaged (seed is 1180591620717411303424, not a"),
    ("search of texts", _set("search", {"trials": [], "chosen": {"C": "x"}}), "",
     "is damaged (search.chosen.C is 'x', not a finite number)"),
    ("a head file outside", _set("head.file", "../x"), "",
     "is damaged (head.file is '../x', not a file name)"),
    ("a path with NUL", _set("cache", "a\x00b"), "", "is damaged (cache is 'a\\x00b', which holds a NUL"),
    ("a class named twice", _set("classes", ["blue", "blue"]), "",
     "is damaged (classes names a class twice)"),
]


@pytest.mark.parametrize("edit, text, says", [c[1:] for c in CRAFTED_BUNDLES],
                         ids=[c[0] for c in CRAFTED_BUNDLES])
def test_a_crafted_bundle_json_is_one_line_naming_its_field(tuned, tmp_path, capsys, edit, text, says):
    _, bundle, _ = tuned
    crafted = _edited_bundle(bundle, tmp_path, edit, text)
    before = _contents(crafted)
    for command in ("info", "report"):
        line = _one_line(capsys, [command, str(crafted)])
        assert line.startswith((f"{crafted}/bundle.json ", f"cannot read {crafted}/bundle.json "))
        assert says in line, line
    assert _contents(crafted) == before


def _replace(name: str, make):
    """A cache edit: dataset ``name`` replaced by what ``make(f, shape)`` makes there."""
    def edit(f: h5py.File) -> None:
        shape = f[name].shape
        del f[name]
        make(f, shape)
    return edit


def _attr(name: str, value):
    return lambda f: f.attrs.__setitem__(name, value)


# (id, edit of the cache, what the one line says after "CACHE ")
CRAFTED_CACHES = [
    ("features a group", _replace("features", lambda f, s: f.create_group("features")),
     "is damaged (/features is not a dataset)"),
    ("labels of floats", _replace("labels", lambda f, s: f.create_dataset("labels", data=np.zeros(s))),
     "is damaged (/labels holds float64 of shape (12,), not whole numbers in 1 dimension)"),
    ("labels of strings", _replace("labels", lambda f, s: f.create_dataset("labels", data=[b"a"] * s[0])),
     "is damaged (/labels holds object of shape (12,), not whole numbers in 1 dimension)"),
    ("paths a table", _replace("paths", lambda f, s: f.create_dataset("paths", data=np.zeros((s[0], 2)))),
     "is damaged (/paths holds float64 of shape (12, 2), not strings in 1 dimension)"),
    ("a trillion labels declared", _replace("labels", lambda f, s: f.create_dataset(
        "labels", shape=(10**12,), dtype="int32", chunks=(1024,))),
     "is damaged (/labels declares 3.73e+03 GiB of values, more than the file's"),
    ("a trillion paths declared", _replace("paths", lambda f, s: f.create_dataset(
        "paths", shape=(10**12,), dtype=h5py.string_dtype(), chunks=(1024,))),
     "is damaged (/paths declares"),
    ("feature_dim an array", _attr("feature_dim", np.array([1280, 1])),
     "is damaged (attribute.feature_dim is array(["),
    ("feature_dim a text", _attr("feature_dim", "wide"), "is damaged (attribute.feature_dim is 'wide'"),
    ("format_version an array", _attr("format_version", np.array([2, 2])),
     "is not a complete featx cache (format 2): extract it again"),
    ("preprocessing nested deep", _attr("preprocessing", "[" * 5000 + "]" * 5000),
     "is damaged (attribute.preprocessing nests deeper than 32 levels)"),
    ("preprocessing of a huge resize", _attr("preprocessing", json.dumps(dict(
        resize_size=10**9, crop_size=224, interpolation="bicubic", mean=[0, 0, 0], std=[1, 1, 1]))),
     "is damaged (attribute.preprocessing.resize_size is 1000000000"),
]


@pytest.mark.parametrize("edit, says", [c[1:] for c in CRAFTED_CACHES], ids=[c[0] for c in CRAFTED_CACHES])
def test_a_crafted_cache_is_one_line_naming_its_part(tuned, tmp_path, capsys, edit, says):
    root, _, _ = tuned
    cache = shutil.copy(root.parent / "colours.h5", tmp_path / "crafted.h5")
    with h5py.File(cache, "r+") as f:
        edit(f)
    for argv in (["info", str(cache)], ["fit-head", str(cache), "--out", str(tmp_path / "b")]):
        assert _one_line(capsys, argv).startswith(f"{cache} {says}")
    assert not (tmp_path / "b").exists()


def test_absurd_sizes_on_the_command_line_are_one_line(tuned, tmp_path, capsys):
    root, _, _ = tuned
    cache = root.parent / "colours.h5"
    line = _one_line(capsys, ["fit-head", str(cache), "--model", "mlp", "-p", "hidden=10000000000",
                              "--out", str(tmp_path / "b")])
    assert "hidden must be at most 16384, not 10000000000" in line
    assert _one_line(capsys, ["extract", str(root), "--out", str(tmp_path / "x.h5"), *QUICK,
                              "--batch-size", "99999999999999999999"]) == (
        "--batch-size must be at most 65536, not 99999999999999999999")
    assert not (tmp_path / "b").exists() and not (tmp_path / "x.h5").exists()


def test_a_folder_1100_levels_deep_is_read(tmp_path, capsys):
    root = write_folder(tmp_path / "deep", {"": 1})
    folders = [root / "red"]
    for _ in range(1100):  # one at a time: mkdir(parents=True) recurses as deep
        folders.append(folders[-1] / "d")
        folders[-1].mkdir()
    deep = write_image(folders[-1] / "far.png")
    try:
        found = featx.scan(root)
        assert deep.relative_to(root) in [s.path for s in found.samples]
        assert main(["check", str(root), "--workers", "0", "--no-progress"]) == 0
        assert "Traceback" not in capsys.readouterr().err
    finally:  # from the bottom: shutil.rmtree recurses too, and pytest's clean-up would fail on it
        deep.unlink()
        for folder in reversed(folders[1:]):
            folder.rmdir()


def test_a_class_named_as_mathtext_is_drawn_as_it_is(tmp_path, capsys):
    root = write_folder(tmp_path / "maths", {"train": 3, "val": 2},
                        classes={"$\\foo{$": (40, 60, 200), "red": (200, 50, 40)})
    cache = featx.extract(root, out=tmp_path / "m.h5", **FAST).path
    assert main(["fit-head", str(cache), "--out", str(tmp_path / "b")]) == 0
    assert main(["report", str(tmp_path / "b")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "b" / "confusion_val.png").is_file()


def test_finetune_onto_a_full_disk_is_one_line_and_keeps_the_bundle(tuned, tmp_path, capsys, monkeypatch):
    root, bundle, out = tuned
    before = _contents(out)

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_state", full)
    line = _one_line(capsys, ["finetune", str(root), "--from", str(bundle), "--out", str(out),
                              "--unfreeze", "top:1", "--epochs", "1", "--workers", "0", "--no-progress"])
    assert line == (f"cannot write {checkpoint.state_folder(out) / checkpoint.CHECKPOINT} (No space left "
                    f"on device): make room, or choose another --out; {out} is as it was")
    assert _contents(out) == before
    shutil.rmtree(checkpoint.state_folder(out))  # as the user would, or `--resume`


def test_the_data_folder_bundle_json_names_is_used_only_where_its_cache_was_made_from_it(
        tuned, tmp_path, capsys, monkeypatch):
    from featx.reporting import report as report_mod

    root, bundle, _ = tuned
    elsewhere = write_folder(tmp_path / "elsewhere", {"": 2})  # images, but not the cache's
    crafted = _edited_bundle(bundle, tmp_path, lambda d: d.update(
        data=str(elsewhere), cache=str(root.parent / "colours.h5")))  # a cache of root, found
    walked, images = [], report_mod._Images  # where the report reads images from
    monkeypatch.setattr(report_mod, "_Images", lambda p, *a: walked.append(Path(p)) or images(p, *a))
    assert main(["report", str(crafted), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert walked == [] and "pass --data with it" in out
    assert main(["report", str(bundle), "--out", str(tmp_path / "r.html")]) == 0  # its own: shown
    assert walked == [root.resolve()]


def test_a_killed_bundle_writes_leftovers_are_removed_by_the_next(tuned, tmp_path):
    _, bundle, _ = tuned
    out = tmp_path / "b"
    featx.load_bundle(bundle).save(out)
    left = tmp_path / ".b.4242.tmp"  # as a write killed mid-way leaves it
    left.mkdir()
    (left / "head.safetensors").write_text("half")
    kept = tmp_path / "kept"
    kept.mkdir()
    (tmp_path / ".b.4343.tmp").symlink_to(kept)
    featx.load_bundle(bundle).save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "kept"]
    featx.load_bundle(out)


def test_names_reach_the_terminal_escaped(tmp_path, capsys):
    root = write_folder(tmp_path / "names", {"": 2})
    (root / "red" / "evil\r\nfeatx: all clean.jpg").write_text("not an image")
    (root / "empty\x1b[2J").mkdir()  # passed over, with a warning: a log line
    assert main(["check", str(root), "--workers", "0", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out and "all clean" not in out.replace("evil\\r\\nfeatx: all clean.jpg", "")
    assert "evil\\r\\nfeatx: all clean.jpg" in out
    assert "\x1b" not in err and "empty\\x1b[2J: an empty class folder: ignored" in err
    assert _one_line(capsys, ["check", str(tmp_path / "no\nsuch")]) == (
        f"{tmp_path}/no\\nsuch is not a folder: give the folder that holds one subfolder per class")


def _relist(file: Path) -> None:
    """bundle.json beside ``file`` listing it as it is now, as a crafted bundle's would."""
    meta = file.parent / "bundle.json"
    doc = json.loads(meta.read_text())
    doc["files"][file.name] = dict(size=file.stat().st_size, sha256=sha256_file(file))
    meta.write_text(json.dumps(doc))


def test_a_crafted_predictions_csv_is_one_line(tuned, tmp_path, capsys):
    root, bundle, _ = tuned
    crafted = shutil.copytree(bundle, tmp_path / "p")
    rows = crafted / "predictions.csv"
    rows.write_text(rows.read_text().replace(",blue,", ",purple,", 1))  # a class it does not have
    _relist(rows)
    line = _one_line(capsys, ["report", str(crafted), "--data", str(root), "--out", str(tmp_path / "r.html")])
    assert line == f"{rows} is damaged (KeyError: 'purple'): fit the head again"
    assert not (tmp_path / "r.html").exists()


def test_a_head_of_nan_coefficients_is_refused_at_load(tuned, tmp_path, capsys):
    from featx.util.state_file import load_state, save_state

    _, bundle, _ = tuned
    crafted = shutil.copytree(bundle, tmp_path / "nan")
    head = crafted / "head.safetensors"
    state = load_state(head, numpy=True)
    coef = state["fitted"]["logistic"]["coef_"].copy()
    coef[0, 0] = np.nan
    state["fitted"]["logistic"]["coef_"] = coef
    save_state(head, state)
    _relist(head)
    assert _one_line(capsys, ["info", str(crafted)]) == (
        f"cannot use the head in {head} (ValueError: fitted.logistic.coef_ holds numbers that are "
        f"not finite (NaN or infinite)): fit the head again")


def test_a_huge_file_that_is_no_image_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    from PIL import UnidentifiedImageError

    from featx.data import images

    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)  # a GiB of nothing, on no disk
    hashed = []
    monkeypatch.setattr(images, "sha256_file", lambda p: hashed.append(p) or "0" * 64)
    with pytest.raises(UnidentifiedImageError):
        images.read_image(sparse)
    assert hashed == []
    image, _ = images.read_image(write_image(tmp_path / "fine.png"))
    assert hashed == [tmp_path / "fine.png"] and image.size == (40, 32)


@pytest.mark.parametrize("metrics, says", [
    ("[" * 5000 + "]" * 5000, "(x.metrics.json nests deeper than 32 levels)"),
    ('{"n": 3, "accuracy": 0.5, "per_class": {"a": 1}}', "(x.metrics.json.per_class.a is 1, not an object)"),
    ('{"n": "three", "accuracy": 0.5}', "(x.metrics.json.n is 'three', not a whole number"),
], ids=["nested", "per_class of numbers", "n a text"])
def test_a_crafted_scores_csv_is_one_line(tuned, tmp_path, capsys, metrics, says):
    _, bundle, _ = tuned
    scores = tmp_path / "x.csv"
    scores.write_text("path,predicted,p_blue,p_red,error\na.png,blue,0.9,0.1,\n")
    (tmp_path / "x.metrics.json").write_text(metrics)
    line = _one_line(capsys, ["report", str(bundle), "--scores", str(scores), "--out",
                              str(tmp_path / "r.html")])
    assert line.startswith(f"--scores {scores} is not as `featx score` writes it ") and says in line, line
    scores.write_text("path,predicted,p_blue,p_red,error\na.png\n")
    (tmp_path / "x.metrics.json").unlink()
    line = _one_line(capsys, ["report", str(bundle), "--scores", str(scores), "--out",
                              str(tmp_path / "r.html")])
    assert "(row 2 has fewer cells than its header)" in line
    assert not (tmp_path / "r.html").exists()
