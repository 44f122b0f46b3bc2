"""Extracting again: only new and changed images go through the backbone; nothing stale is reused."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.cache.format import default_path

from conftest import COLOURS, FAST, ctrl_c_after, fast, write_folder, write_image


def test_only_new_and_changed_images_are_extracted_in_a_fresh_scans_order(tmp_path):
    data = write_folder(tmp_path / "colours", {"train": 3, "val": 2, "test": 1})
    bmp = write_image(data / "val" / "red" / "flat.bmp", COLOURS["red"], seed=7)
    first = featx.open_cache(featx.extract(data, out="c.h5", **FAST).path)

    write_image(data / "train" / "blue" / "blue10.png", COLOURS["blue"], seed=50)  # added
    (data / "test" / "red" / "red0.png").unlink()                                 # removed
    write_image(data / "train" / "blue" / "blue0.png", COLOURS["blue"], size=(48, 32))  # resized
    size = bmp.stat().st_size
    write_image(bmp, COLOURS["blue"], seed=8)            # other pixels, same size: told by its hash
    touched = data / "train" / "red" / "red2.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, a new time
    assert bmp.stat().st_size == size

    second = featx.extract(data, out="c.h5", **FAST)
    assert (second.n_images, second.n_reused, second.n_extracted) == (13, 10, 3)
    fresh = featx.open_cache(featx.extract(data, out="fresh.h5", **FAST).path)
    again = featx.open_cache(second.path)
    assert again.paths == fresh.paths and again.paths[2] == "train/blue/blue10.png"
    np.testing.assert_allclose(again.features, fresh.features, rtol=1e-4, atol=1e-5)
    row = first.paths.index("val/red/flat.bmp")
    assert not np.allclose(first.features[row], again.features[again.paths.index("val/red/flat.bmp")])
    # The touched file's new time is recorded, so the next run need not hash it again.
    assert featx.extract(data, out="c.h5", **FAST).up_to_date


CHANGES = {
    "backbone": {"backbone": "mobilenet_v3_small"},
    "weights": {"weights_sha256": "0" * 64},
    "pool": {"pool": "max"},
    "feature_dim": {"feature_dim": 576},
    "input_size": {"input_size": 240},
    "resize": {"preprocessing": {"resize_size": 288}},
    "crop": {"preprocessing": {"crop_size": 240}},
    "interpolation": {"preprocessing": {"interpolation": "bilinear"}},
    "mean": {"preprocessing": {"mean": [0.485, 0.456, 0.406]}},
    "std": {"preprocessing": {"std": [0.229, 0.224, 0.225]}},
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES)
def test_every_setting_that_changes_a_feature_changes_the_cache_key(lite0_random, change):
    ident = lite0_random.identity()
    other = dataclasses.replace(ident, **{**change, "preprocessing": {
        **ident.preprocessing, **change.get("preprocessing", {})}})
    assert other.key("float32") != ident.key("float32")
    assert default_path(Path("d"), other, "float32") != default_path(Path("d"), ident, "float32")
    assert ident.key("float16") != ident.key("float32")


def test_caches_written_by_earlier_versions_keep_their_names_and_keys(lite0_random):
    # Values from featx before the feature identity was a type of its own: its caches are reused.
    ident = lite0_random.identity()
    assert default_path(Path("/data/pets"), ident, "float32") == \
        Path("cache/pets-efficientnet_lite0-avg-deb631d88b.h5")
    assert ident.key("float16") == "fb52247ccf399ee721eeddf926a2f7bd0bc52666ed70ed27f29cb30c9a19c36f"


def test_features_made_with_other_settings_are_never_reused(pool_folder, monkeypatch, caplog):
    featx.extract(pool_folder, out="x.h5", **FAST)
    ctrl_c_after(monkeypatch, batches=1)
    with pytest.raises(KeyboardInterrupt):  # leaves a shard of avg-pooled features
        featx.extract(pool_folder, out="y.h5", **FAST)
    caplog.clear()
    folded = fast(execution="fold")  # exporting a graph of max-pooled features would take longer
    with caplog.at_level(logging.WARNING, logger="featx"):
        assert featx.extract(pool_folder, out="x.h5", pool="max", **folded).n_reused == 0
        assert featx.extract(pool_folder, out="y.h5", pool="max", **folded).n_reused == 0
    assert caplog.messages[0] == "x.h5 holds features made with pool=avg, not pool=max: extracting every " \
                                 "image again"
    assert caplog.messages[1].startswith("y.h5.partial: deleted 1 shard(s) that cannot be used, e.g. "
                                         "shard-000001.npz (ValueError: made with other settings)")
    fc = featx.open_cache("x.h5")
    assert fc.attrs["pool"] == "max"
    with pytest.raises(featx.CacheError, match=r"^x.h5 holds features made with pool=max, not the pool=avg "
                                               r"asked for: extract the images again with those settings$"):
        featx.open_cache("x.h5", identity=dataclasses.replace(fc.identity, pool="avg"))
