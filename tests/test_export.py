"""featx export: one ONNX model from uint8 images to the bundle's probabilities, its classes and
preprocessing as metadata, and the docs' example running it with torch and featx unimportable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import featx
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.spec import BackboneSpec

from conftest import write_folder

DOCS = Path(__file__).resolve().parent.parent / "docs" / "commands" / "export.md"
RUN = featx.Runtime(workers=0, progress=False)


@pytest.fixture
def bundle(register, tmp_path, monkeypatch) -> Path:
    """A logistic bundle on a tiny random network of reddish and bluish noise, in a hub of its own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    register(BackboneSpec(
        name="tiny_export_head_net", source="tests",
        preprocessing=Preprocessing(20, 16, "bilinear", (0.5,) * 3, (0.25,) * 3),
        build=lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6()),
        tap=lambda m: m, spatial=True))
    data = write_folder(tmp_path / "colours", {"train": 6, "val": 3})
    cache = featx.extract(data, "tiny_export_head_net", weights="none", out=tmp_path / "f.h5",
                          dtype="float32", runtime=RUN).path
    return featx.fit_head(cache, out=tmp_path / "b.logistic").bundle


def test_the_exported_model_runs_without_featx_and_agrees_with_score(bundle, tmp_path):
    r = featx.export(bundle)
    assert r.path == Path(f"{bundle}.onnx") and r.classes == ["blue", "red"] and r.difference < 1e-4
    example = tmp_path / "predict.py"
    example.write_text(re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1))
    scored = featx.score(tmp_path / "colours" / "val", bundle, cache_dir=tmp_path / "cache", runtime=RUN)
    rows = {row.split(",")[0]: row.split(",") for row in scored.csv.read_text().splitlines()[1:]}
    blocked = "import sys; sys.modules.update(torch=None, torchvision=None, featx=None); "
    for name in ("blue/blue0.png", "red/red1.png"):
        out = subprocess.run([sys.executable, "-c", blocked + f"exec(open({str(example)!r}).read())",
                              str(r.path), str(tmp_path / "colours" / "val" / name)],
                             capture_output=True, text=True, check=True).stdout.split()
        predicted, p_blue, p_red = rows[name][1], float(rows[name][3]), float(rows[name][4])
        assert out[0] == predicted
        assert abs(float(out[1]) - (p_blue if predicted == "blue" else p_red)) < 0.02


def test_metadata_names_the_classes_and_the_preprocessing(bundle):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(featx.export(bundle).path)).metadata_props}
    assert json.loads(props["classes"]) == ["blue", "red"]
    assert json.loads(props["preprocessing"])["crop_size"] == 16


def test_what_does_not_export_is_one_line(bundle, tmp_path):
    knn = featx.fit_head(featx.load_bundle(bundle).info["cache"], model="knn", out=tmp_path / "k").bundle
    with pytest.raises(featx.ConfigError, match=r"its knn head does not export \(logistic, linear and mlp"):
        featx.export(knn)
    with pytest.raises(featx.ConfigError, match=r"is no \.onnx file"):
        featx.export(bundle, out=tmp_path / "model.bin")
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"not featx's")
    with pytest.raises(featx.ConfigError, match="is not a file featx wrote"):
        featx.export(bundle, out=mine)
    assert mine.read_bytes() == b"not featx's"
