"""The exported graph quantized to int8: eager's features within int8's tolerance, the quantized
graph made once per calibration and reused, and every refusal one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import featx
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.spec import BackboneSpec
from featx.extraction.execution import cpu, exported, quantized
from featx.extraction.execution.fold import probe_batch

needs_int8 = pytest.mark.skipif(
    not cpu.has_int8_dot() or "openvino" not in exported.installed(),
    reason="int8 needs a CPU with int8 dot products and OpenVINO")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)


@pytest.fixture
def tiny_net(register, tmp_path, monkeypatch) -> featx.FeatureExtractor:
    """Two convolutions with ReLU6 between, as in Lite0, on 16×16 inputs, in a hub of its own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 16, 3),
                             nn.ReLU6())

    register(BackboneSpec(
        name="tiny_int8_net", source="tests",
        preprocessing=Preprocessing(20, 16, "bilinear", (0.5,) * 3, (0.25,) * 3),
        build=build, tap=lambda m: m, spatial=True))
    return featx.load_backbone("tiny_int8_net", weights="none")


def _relative_error(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(want - got).max() / np.abs(want).max())


@needs_int8
def test_int8_features_are_within_its_tolerance_of_eager_and_int8_is_what_runs(tiny_net):
    graph = exported.export(tiny_net)
    path = quantized.quantize(tiny_net, graph, _images(32, seed=0), key="calibration")
    assert path.parent == graph.parent and path != graph
    run = exported.Exported(tiny_net, "openvino", "int8", path)  # checked on probe_batch
    assert run.difference < exported.TOLERANCES["int8"]
    for x in (probe_batch(tiny_net), torch.from_numpy(_images(5, seed=1))):
        with torch.inference_mode():
            want = tiny_net(x).numpy()
        got = run(x).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert _relative_error(want, got) < exported.TOLERANCES["int8"]
    import onnx

    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(path)).graph.node}


@needs_int8
def test_the_quantized_graph_is_made_once_per_calibration_and_reused(tiny_net, monkeypatch):
    graph = exported.export(tiny_net)
    first = quantized.quantize(tiny_net, graph, _images(8, seed=0), key="a")
    made = first.stat().st_mtime_ns

    def never(*args):
        raise AssertionError("quantized again")

    with monkeypatch.context() as m:
        m.setattr(quantized, "_write_quantized", never)
        assert quantized.quantize(tiny_net, graph, _images(8, seed=0), key="a") == first
    assert first.stat().st_mtime_ns == made
    other = quantized.quantize(tiny_net, graph, _images(8, seed=2), key="b")
    assert other != first and other.is_file()


def test_a_quantization_that_fails_is_one_line_and_leaves_no_file(tiny_net, monkeypatch):
    graph = exported.export(tiny_net)

    def fails(*args, **kwargs):
        raise ValueError("unsupported operator\nand a long trace")

    monkeypatch.setattr("onnxruntime.quantization.quantize_static", fails)
    with pytest.raises(exported.Refused, match=r"^tiny_int8_net cannot be quantized to int8 "
                                               r"\(ValueError: unsupported operator\)$"):
        quantized.quantize(tiny_net, graph, _images(8, seed=0), key="a")
    assert sorted(p.name for p in graph.parent.iterdir()) == [graph.name]


def test_int8_where_the_cpu_has_no_int8_dot_products_is_one_line_naming_the_cpu(monkeypatch):
    monkeypatch.setattr(cpu, "has_int8_dot", lambda: False)
    with pytest.raises(featx.ConfigError, match=r"^`dtype` int8 needs a CPU with int8 dot products "
                                                r"\(AMX-INT8, AVX-512 VNNI or AVX-VNNI\); this one "
                                                r"\(.+\) has none: use `dtype` float32$"):
        featx.place(featx.Runtime(device="cpu"), dtype="int8")


def test_int8_without_openvino_or_on_another_runtime_is_one_line(monkeypatch):
    monkeypatch.setattr(cpu, "has_int8_dot", lambda: True)
    with pytest.raises(featx.ConfigError, match=r"^`dtype` int8 runs on OpenVINO on a CPU, not "
                                                r"onnxruntime"):
        exported.check("onnxruntime", "int8")
    monkeypatch.setattr(exported, "installed", lambda: ["onnxruntime"])
    with pytest.raises(featx.ConfigError, match=r"^`dtype` int8 on a CPU runs on OpenVINO: pip "
                                                r"install openvino$"):
        exported.check("auto", "int8")


@pytest.mark.parametrize("flags, supported", [
    ({"avx2", "fma"}, False), ({"avx2", "avx512f", "avx512_bf16"}, False),
    ({"avx512_vnni"}, True), ({"avx_vnni"}, True), ({"amx_int8", "amx_bf16"}, True)])
def test_int8_is_supported_where_the_cpu_has_int8_dot_products(monkeypatch, flags, supported):
    monkeypatch.setattr(cpu, "flags", lambda: frozenset(flags))
    assert cpu.has_int8_dot() is supported


@needs_int8
def test_int8_end_to_end_calibrates_once_and_the_bundle_scores_with_that_graph(tiny_net, tmp_path,
                                                                                monkeypatch):
    from conftest import write_folder

    data = write_folder(tmp_path / "colours", {"train": 6, "val": 3})
    run = featx.Runtime(workers=0, progress=False)
    first = featx.extract(data, "tiny_int8_net", weights="none", out=tmp_path / "f.h5", dtype="int8",
                          runtime=run)
    fc = featx.open_cache(first.path)
    graph = fc.identity.quantized
    assert first.execution == "openvino" and graph.startswith("tiny_int8_net-") and "-int8-" in graph
    ref = featx.extract(data, "tiny_int8_net", weights="none", out=tmp_path / "g.h5",
                        dtype="float32", runtime=run)
    assert fc.attrs["config_key"] != featx.open_cache(ref.path).attrs["config_key"]
    assert _relative_error(featx.open_cache(ref.path).features, fc.features) < exported.TOLERANCES["int8"]

    # Later runs of the cache, and scoring its bundle, use that graph: never quantized again.
    monkeypatch.setattr(quantized, "_write_quantized", lambda *a: pytest.fail("quantized again"))
    (data / "train" / "red" / "red0.png").unlink()
    again = featx.extract(data, "tiny_int8_net", weights="none", out=first.path, dtype="int8", runtime=run)
    assert not again.up_to_date and featx.open_cache(again.path).identity.quantized == graph
    bundle = featx.fit_head(again.path, out=tmp_path / "b").bundle
    b = featx.load_bundle(bundle)
    assert b.dtype == "int8" and graph in b.files
    (exported.folder() / graph).unlink()  # the bundle's own copy is what scores
    r = featx.score(data / "val", bundle, cache_dir=tmp_path / "cache", runtime=run)
    assert r.features.dtype == "int8" and r.n_scored == 6
    assert featx.open_cache(r.features.path).identity.quantized == graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_each_precision_stays_within_its_recorded_tolerance_of_eager(tiny_net, dtype):
    try:
        exported.check("openvino", dtype)
    except featx.ConfigError as e:
        pytest.skip(str(e))
    graph = None
    if dtype == "int8":
        graph = quantized.quantize(tiny_net, exported.export(tiny_net), _images(32, seed=0), key="k")
    run = exported.Exported(tiny_net, "openvino", dtype, graph)
    x = torch.from_numpy(_images(8, seed=3))
    with torch.inference_mode():
        want = tiny_net(x).numpy()
    assert _relative_error(want, run(x).numpy()) < exported.TOLERANCES[dtype]
    # what was measured on the probe is noted beside the graph it ran
    noted = exported.read_notes(graph or exported.export(tiny_net))["differences"]
    assert noted[f"openvino/{exported.computed_in(dtype)}"] == run.difference
