"""check(): what extract would skip, what the scan passes over, and duplicates across splits."""

from __future__ import annotations

import shutil

import featx
from featx.cli import main
from featx.cli.text import summary

from conftest import write_folder, write_image


def test_duplicates_within_and_across_splits_and_classes(tmp_path, capsys):
    split_folder = write_folder(tmp_path / "d", {"train": 3})
    for i, rel in enumerate(["val/blue/v0.png", "val/red/v1.png", "test/red/t0.png"]):
        write_image(split_folder / rel, seed=900 + i)
    copy = shutil.copyfile
    copy(split_folder / "train/red/red0.png", split_folder / "test/red/red_again.png")      # leakage
    copy(split_folder / "train/blue/blue1.png", split_folder / "train/blue/blue_copy.png")  # within train
    copy(split_folder / "train/red/red2.png", split_folder / "val/blue/mislabelled.png")    # two labels
    (split_folder / "val/red/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    report = featx.check(split_folder, workers=0, progress=False)
    why = f"UnidentifiedImageError: cannot identify image file '{split_folder}/val/red/broken.png'"
    assert report.skipped == [("val/red/broken.png", why)]
    assert [[s.path.as_posix() for s in g] for g in report.leaks] == [
        ["train/red/red0.png", "test/red/red_again.png"], ["train/red/red2.png", "val/blue/mislabelled.png"]]
    assert len(report.duplicates) == 3

    assert main(["check", str(split_folder), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("checked 13 images in 2 classes (train 7, val 4, test 2) in ")
    assert out[1:] == [
        "1 would be skipped:", f"  val/red/broken.png: {why}",
        "duplicates, the same bytes under other names: 3 group(s), 2 across splits:",
        "  train/blue/blue1.png = train/blue/blue_copy.png",
        "  train/red/red0.png = test/red/red_again.png  (train and test: leakage)",
        "  train/red/red2.png = val/blue/mislabelled.png  (train and val: leakage; labelled blue and red)"]


def test_a_clean_folder_says_so_in_worker_processes(tmp_path):
    report = featx.check(write_folder(tmp_path / "clean", {"": 3}), workers=2, progress=False)
    assert summary(report).splitlines()[1:] == ["every image can be read; no duplicates"]
