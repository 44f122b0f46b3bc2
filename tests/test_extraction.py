"""extract(): the HDF5 cache it writes, skipping bad files, and doing no work twice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

import featx
from featx.cli.text import summary
from featx.util.files import sha256_file

from conftest import FAST, ctrl_c_after, fast, write_image


def test_the_cache_layout(split_folder, tmp_path):
    (split_folder / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    r = featx.extract(split_folder, **FAST)
    assert (r.n_images, r.n_failed, r.up_to_date) == (22, 1, False)
    assert r.path.resolve().parent == tmp_path / "cache"
    assert r.path.name.startswith("colours-efficientnet_lite0-avg-")
    assert r.failed == [("train/red/broken.jpg",
                         "UnidentifiedImageError: a text file, not an image: it begins 'not a jpeg'")]

    with h5py.File(r.path) as f:
        assert f["features"].shape == (22, 1280) and f["features"].dtype == np.float32
        assert f["features"].chunks is not None
        assert f["classes"].asstr()[()].tolist() == ["blue", "red"]
        paths = f["paths"].asstr()[()].tolist()
        splits = f["splits"].asstr()[()].tolist()
        assert paths[0] == "train/blue/blue0.png" and "train/red/broken.jpg" not in paths
        assert splits.count("train") == 12 and splits.count("val") == 6 and splits.count("test") == 4
        assert f["labels"][()].tolist() == [0 if p.split("/")[1] == "blue" else 1 for p in paths]
        assert f["failed/paths"].asstr()[()].tolist() == ["train/red/broken.jpg"]
        sizes = [(split_folder / p).stat().st_size for p in paths]
        assert f["files/size"][()].tolist() == sizes and f["files/mtime_ns"].dtype == np.int64
        assert f["files/sha256"].asstr()[0] == sha256_file(split_folder / paths[0])
        a = dict(f.attrs)
    assert a["backbone"] == "efficientnet_lite0" and a["weights_sha256"] == "random-init"
    assert a["pool"] == "avg" and a["feature_dim"] == 1280 and a["input_size"] == 224
    assert featx.Preprocessing.from_dict(json.loads(a["preprocessing"])) == \
        featx.get_backbone("efficientnet_lite0").preprocessing
    assert {"featx_version", "torch_version", "torchvision_version", "created"} <= set(a)
    assert a["complete"] and a["n_images"] == 22 and a["n_failed"] == 1 and a["format_version"] == 2


def test_features_are_those_of_the_model(split_folder):
    r = featx.extract(split_folder, **FAST)
    fc = featx.open_cache(r.path)
    model = featx.load_backbone("efficientnet_lite0", weights="none")
    image = featx.load_rgb(split_folder / fc.paths[5])
    expected = model(model.preprocessing.crop(image).unsqueeze(0)).numpy()[0]
    np.testing.assert_allclose(fc.features[5], expected, rtol=1e-4, atol=1e-5)


def test_second_run_is_up_to_date_and_a_change_is_noticed(split_folder):
    first = featx.extract(split_folder, **FAST)
    mtime = first.path.stat().st_mtime_ns
    again = featx.extract(split_folder, **FAST)
    assert again.up_to_date and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert summary(again) == (f"up to date: {first.path} (22 images, 0 skipped); precision: "
                              f"{first.dtype} ({first.why_dtype})")

    write_image(split_folder / "val" / "red" / "new.png", (200, 50, 40))
    changed = featx.extract(split_folder, **FAST)
    assert not changed.up_to_date and changed.n_images == 23 and changed.path == first.path


def test_float16_and_options_get_their_own_file(split_folder):
    a = featx.extract(split_folder, **FAST)
    # Folded in torch: exporting a graph of another base would take longer than the test.
    b = featx.extract(split_folder, backbone="mobilenet_v3_small", dtype="float16", **fast(execution="fold"))
    assert a.path != b.path and "-float16-" in b.path.name
    fc = featx.open_cache(b.path)
    assert fc.features.dtype == np.float16 and fc.features.shape == (22, 576)


def test_out_names_the_file(split_folder, tmp_path):
    r = featx.extract(split_folder, out=tmp_path / "mine.h5", **FAST)
    assert r.path == tmp_path / "mine.h5" and r.path.is_file()


def test_worker_processes_give_the_same_features(split_folder):
    (split_folder / "val" / "blue" / "empty.png").write_bytes(b"")
    one = featx.open_cache(featx.extract(split_folder, out="a.h5", **FAST).path)
    two = featx.open_cache(featx.extract(split_folder, out="b.h5", weights="none", runtime=featx.Runtime(
        batch_size=5, workers=2, progress=False)).path)
    assert one.paths == two.paths and one.failed == two.failed and len(one.failed) == 1
    np.testing.assert_allclose(one.features, two.features, rtol=1e-4, atol=1e-5)


def test_ctrl_c_keeps_every_finished_batch_and_the_same_command_goes_on(split_folder, monkeypatch,
                                                                        caplog):
    whole = featx.open_cache(featx.extract(split_folder, out="whole.h5", **FAST).path)
    ctrl_c_after(monkeypatch, batches=2)
    with pytest.raises(KeyboardInterrupt):
        featx.extract(split_folder, out="cut.h5", **fast(batch_size=4))
    assert not Path("cut.h5").exists() and not Path("cut.h5.lock").exists()
    assert caplog.messages[-1] == ("stopped: the 8 images extracted so far are kept in cut.h5.partial; "
                                   "run the same command again to go on")
    with pytest.raises(featx.CacheError, match=r"cut.h5.partial is an unfinished extraction: run featx "):
        featx.open_cache("cut.h5")

    caplog.set_level(logging.INFO, logger="featx")
    r = featx.extract(split_folder, out="cut.h5", **FAST)
    assert (r.n_reused, r.n_extracted) == (8, 14) and not Path("cut.h5.partial").exists()
    assert "resuming: 8 images were already extracted in cut.h5.partial" in caplog.messages
    assert summary(r).startswith("extracted 14 images, reused 8 (0 skipped) in ")
    cut = featx.open_cache(r.path)
    assert cut.paths == whole.paths
    np.testing.assert_allclose(cut.features, whole.features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: featx.Runtime(batch_size=0), "`batch_size` must be at least 1, not 0"),
    (lambda: featx.Runtime(device="tpu"), "unknown device 'tpu': choose auto, cpu or cuda"),
    (lambda: featx.Runtime(workers=-1), "`workers` must be 0 or more, not -1"),
    (lambda: featx.Runtime(decode="gpu"), "unknown `decode` 'gpu': choose one of auto, cpu, device"),
])
def test_bad_runtime_settings(make, message):
    with pytest.raises(featx.ConfigError, match=message):
        make()


def test_bad_dtype(split_folder):
    with pytest.raises(featx.ConfigError, match="unknown `dtype` 'float64': choose one of float32, float16"):
        featx.extract(split_folder, dtype="float64", **FAST)


def test_not_a_cache(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(featx.CacheError, match="cannot read .*x.h5 as HDF5"):
        featx.open_cache(tmp_path / "x.h5")
    with pytest.raises(featx.CacheError, match="no feature cache at .*y.h5: run `featx extract DATA` first"):
        featx.open_cache(tmp_path / "y.h5")
