"""classify(): the backbone's own ImageNet head on real photos, bad files skipped, and what it
refuses to classify with."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import featx
from featx.cli.text import classified as classified_text
from featx.cli.text import summary
from featx.scoring.classify import ClassifyResult, classify

from conftest import QUIET, write_image

HYMENOPTERA = Path(__file__).parents[1].parent / "shared" / "data" / "hymenoptera"
# Photos where the insect fills the frame: the true class is first with the default backbone,
# so the top-5 check below has a wide margin.
PHOTOS = {"ant": ["10308379_1b6c72e180.jpg", "1053149811_f62a3410d3.jpg", "1119630822_cd325ea21a.jpg"],
          "bee": ["10870992_eebeeb3a12.jpg", "1181173278_23c36fac71.jpg", "1297972485_33266a18d9.jpg"]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is not here (../shared/data)")
    root = tmp_path_factory.mktemp("classify") / "photos"
    for label, names in PHOTOS.items():
        (root / f"{label}s").mkdir(parents=True)
        for name in names:
            shutil.copy(HYMENOPTERA / "val" / f"{label}s" / name, root / f"{label}s" / name)
    (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="module")
def classified(photos) -> ClassifyResult:
    # Module-scoped, so it runs before the autouse chdir: the default CSV path is made relative
    # to the photos' folder here instead.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(photos.parent)
        return classify(photos, runtime=QUIET)


def test_each_photo_has_its_insect_among_its_top_five_imagenet_labels(classified):
    assert len(classified.rows) == 6
    for path, top in classified.rows:
        insect = path.split("/")[0].removesuffix("s")  # ants/ holds ants, ImageNet's "ant"
        assert len(top) == 5 and insect in [label for label, _ in top], (path, top)
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_a_broken_file_is_skipped_and_its_reason_written(classified, photos):
    assert classified.n_failed == 1
    (path, why), = classified.failed
    assert path == "bees/broken.jpg" and why
    with open(photos.parent / classified.csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", *(f"{c}{r}" for r in range(1, 6) for c in ("label", "p")), "error"]
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == 7 and by_path["bees/broken.jpg"]["error"] == why
    assert by_path["bees/broken.jpg"]["label1"] == ""
    assert by_path["ants/10308379_1b6c72e180.jpg"]["label1"] == "ant"
    assert f"skipped bees/broken.jpg: {why}" in summary(classified)


def test_the_default_csv_is_named_after_the_folder_and_backbone(classified):
    assert classified.csv.parent == Path("cache", "classify")
    assert re.fullmatch(r"photos-efficientnet_lite0-[0-9a-f]{8}\.csv", classified.csv.name)


def test_the_summary_shows_one_line_per_image_up_to_its_limit(classified):
    lines = classified_text(classified, limit=4).splitlines()
    assert re.fullmatch(r"ants/10308379_1b6c72e180\.jpg: ant 0\.\d\d(, [^,]+ 0\.\d\d){4}", lines[0])
    assert lines[4] == "... 2 more in the CSV"
    assert lines[-1].startswith("classified 6 images (1 skipped) with efficientnet_lite0's ImageNet head")


def test_random_weights_are_refused_in_one_line(tmp_path):
    write_image(tmp_path / "x.png")
    with pytest.raises(featx.ConfigError) as e:
        classify(tmp_path, weights="none", runtime=QUIET)
    assert str(e.value) == ("`weights` none gives efficientnet_lite0 random weights, whose ImageNet "
                            "head means nothing: leave out `weights` to use its ImageNet weights")


def test_a_backbone_without_an_imagenet_classifier_is_refused(tmp_path, register):
    spec = featx.get_backbone("efficientnet_lite0")
    register(featx.BackboneSpec(name="tiny", source="test", preprocessing=spec.preprocessing,
                                build=lambda: nn.Conv2d(3, 8, 3), tap=lambda m: m, spatial=True))
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "tiny.pth")
    write_image(tmp_path / "images" / "x.png")
    with pytest.raises(featx.ConfigError, match=r"^tiny's own network outputs 8x222x222 values per "
                                                r"image, not 1000 ImageNet class scores"):
        classify(tmp_path / "images", backbone="tiny", weights=tmp_path / "tiny.pth", runtime=QUIET)


def test_top_must_be_a_number_of_imagenet_classes(tmp_path):
    with pytest.raises(featx.ConfigError, match=r"^`top` must be between 1 and 1000, not 0$"):
        classify(tmp_path, top=0, runtime=QUIET)
