"""Hostile input (issue 31): files crafted to cost memory, to redirect writes, to replace what a
run reads, or to crash featx, each end in one line or are handled as documented."""

from __future__ import annotations

import fcntl
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

from conftest import FAST, QUIET, write_folder, write_image

QUICK = ["--workers", "0", "--no-progress", "--weights", "none"]
# One step an epoch on tiny data, no mixing, the fine-tuned model kept whatever its gain.
TUNE = {"recipe": featx.Recipe(unfreeze="top:1", epochs=1, keep="finetuned", mix=False), "runtime": QUIET}

# Extract, the device's crop and fine-tuning's plain crop of 118-byte PNGs of 1×12000 px, in a
# process of their own so that its peak memory is theirs; it prints that peak in MB.
_ELONGATED = textwrap.dedent("""
    import resource, sys
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
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
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


def test_a_bundle_being_written_is_refused_to_another_writer(tuned, tmp_path):
    root, bundle, out = tuned
    before = _contents(out)
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)  # as another process holding it would
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        for write in (lambda: featx.finetune(root, bundle, out=out, **TUNE),
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
    images, kept = found.crops([str(secret), climbing, inside])
    assert kept == [2] and opened == [root / inside]
