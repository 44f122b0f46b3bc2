"""A bundle is data: nothing featx writes is a pickle, a pickled bundle is refused without being
read, every file is checked against bundle.json, and a bundle is written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

import featx
from featx.cli import main
from featx.util.files import sha256_file

from conftest import FAST, QUIET, write_folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(data folder, a logistic bundle fitted on it, the fine-tuned bundle made from that)."""
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 4, "val": 2})
    cache = featx.extract(root, out=root.parent / "colours.h5", **FAST).path
    bundle = featx.fit_head(cache).bundle
    recipe = featx.Recipe(unfreeze="top:1", epochs=1, keep="finetuned")  # a bundle with a backbone
    tuned = featx.finetune(root, bundle, recipe=recipe, runtime=QUIET).bundle
    return root, bundle, tuned


def _is_pickle(data: bytes) -> bool:
    # A pickle starts with its protocol opcode; torch.save and joblib write a zip around one.
    return data[:1] == b"\x80" or data[:4] == b"PK\x03\x04" or b"pickle" in data[:64]


def test_no_file_of_a_bundle_is_a_pickle_and_each_is_listed(fitted):
    _, bundle, tuned = fitted
    for folder in (bundle, tuned):
        files = json.loads((folder / "bundle.json").read_text())["files"]
        assert sorted(files) == sorted(p.name for p in folder.iterdir() if p.name != "bundle.json")
        for path in folder.iterdir():
            assert not _is_pickle(path.read_bytes()), path
            if path.name != "bundle.json":
                assert files[path.name] == dict(size=path.stat().st_size, sha256=sha256_file(path))
    assert {"head.safetensors", "backbone.safetensors"} <= set(os.listdir(tuned))


class _Payload:
    """Unpickling this creates the file ``marker``: what a malicious head.joblib would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious(folder: Path, source: Path, marker: Path, as_file: str) -> Path:
    """A copy of ``source`` whose head is a pickle that creates ``marker``: as an older featx's
    head.joblib, or swapped in under the name bundle.json lists."""
    shutil.copytree(source, folder)
    payload = pickle.dumps(_Payload(marker))
    doc = json.loads((folder / "bundle.json").read_text())
    if as_file == "head.joblib":  # a bundle of featx 0.x, with bundle.json to match
        (folder / "head.safetensors").unlink()
        doc.update(format_version=1, head=dict(model="logistic", format="joblib", file="head.joblib"))
        del doc["files"]
    else:  # the listed head replaced, and its entry edited to match
        doc["files"]["head.safetensors"] = dict(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    (folder / as_file).write_bytes(payload)
    (folder / "bundle.json").write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("as_file", ["head.joblib", "head.safetensors"])
def test_a_malicious_bundle_is_refused_by_every_loader_and_runs_nothing(fitted, tmp_path, capsys, as_file):
    root, bundle, _ = fitted
    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "evil", bundle, marker, as_file)
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))  # the payload does work, when unpickled
    assert (tmp_path / "proof").exists()

    with pytest.raises(featx.BundleError) as e:
        featx.load_bundle(evil)
    assert "\n" not in str(e.value)
    expected = ("a bundle of an older featx whose head is a pickle" if as_file == "head.joblib"
                else "cannot use the head in")
    for argv in (["score", str(root), "--model", str(evil), "--workers", "0", "--no-progress"],
                 ["finetune", str(root), "--from", str(evil), "--workers", "0", "--no-progress"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("featx: error: ") and expected in err and err.count("\n") == 1
    assert not marker.exists()


def test_an_older_bundle_is_refused_with_the_command_that_fits_it_again(fitted, tmp_path):
    _, bundle, _ = fitted
    old = _malicious(tmp_path / "old", bundle, tmp_path / "pwned", "head.joblib")
    with pytest.raises(featx.BundleError, match=r"fit the head again \(seconds, from the cached "
                                                r"features\): featx fit-head .*colours.h5 --model "
                                                r"logistic --out .*old$"):
        featx.load_bundle(old)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_bytes(f.read_bytes()[:-7]), "bytes, not the"),        # truncated
    (lambda f: f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8), "its sha256 is not the one bundle.json lists"),
    (lambda f: f.unlink(), "missing, though bundle.json lists it"),
])
@pytest.mark.parametrize("name", ["head.safetensors", "backbone.safetensors"])
def test_a_changed_file_is_refused_by_name(fitted, tmp_path, damage, message, name):
    _, _, tuned = fitted
    copy = shutil.copytree(tuned, tmp_path / "copy")
    damage(copy / name)
    with pytest.raises(featx.BundleError,
                       match=rf"^{copy / name}: .*{message}.*: get it again, or fit the head again$"):
        featx.load_bundle(copy)


def test_a_file_swapped_in_from_another_bundle_is_refused(fitted, tmp_path):
    _, bundle, tuned = fitted
    copy = shutil.copytree(bundle, tmp_path / "copy")
    shutil.copy(tuned / "head.safetensors", copy / "head.safetensors")
    with pytest.raises(featx.BundleError, match="head.safetensors: .*(bytes, not the|sha256 is not)"):
        featx.load_bundle(copy)


def test_a_bundle_moved_elsewhere_still_loads_and_names_no_absolute_path(fitted, tmp_path):
    root, _, tuned = fitted
    text = (tuned / "bundle.json").read_text()
    assert str(root.parent) not in text and str(Path.home()) not in text
    moved = shutil.copytree(tuned, tmp_path / "elsewhere" / "b")
    assert featx.score(root, moved, out="s.csv", runtime=QUIET).accuracy is not None


def test_refitting_over_a_bundle_is_all_or_nothing(fitted, tmp_path, monkeypatch):
    _, bundle, _ = fitted
    out = shutil.copytree(bundle, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cache = featx.load_bundle(bundle).info["cache"]

    from featx.heads import storage

    def full(*_args, **_kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(storage, "save_state", full)
    with pytest.raises(featx.BundleError, match=rf"^cannot write the bundle {out} \(No space left on "
                                                rf"device\): make room, or choose another `out`; "
                                                rf"{out} is as it was$"):
        featx.fit_head(cache, "linear", out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["b"]  # no temporary folder left behind
    monkeypatch.undo()
    again = featx.fit_head(cache, "mlp", params={"epochs": 2}, out=out)
    assert featx.load_bundle(again.bundle).model == "mlp"
