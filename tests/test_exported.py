"""The exported graph on ONNX Runtime and OpenVINO: eager's features within the tolerance, the
fastest runtime chosen once per CPU and base, and every refusal one line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import featx
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.spec import BackboneSpec
from featx.cli.text import summary
from featx.extraction.execution import cpu, exported
from featx.extraction.execution.fold import TOLERANCE
from featx.extraction.execution.prepare import RACE_BATCHES, Race, prepare

from conftest import fast, write_folder

CPU = torch.device("cpu")
INSTALLED = exported.installed()
needs_openvino = pytest.mark.skipif("openvino" not in INSTALLED, reason="OpenVINO is not installed")


def _images(n: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def _relative_error(want: torch.Tensor, got: torch.Tensor) -> float:
    return ((want - got).abs().max() / want.abs().max()).item()


@pytest.fixture
def own_hub(tmp_path, monkeypatch):
    """Graphs and choices of this test's own: none exported, none chosen yet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def tiny_net(register) -> featx.FeatureExtractor:
    """Convolution, BatchNorm with real statistics, ReLU, on 16×16 inputs."""
    def build():
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3))
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2)
        return net

    register(BackboneSpec(
        name="tiny_export_net", source="tests",
        preprocessing=Preprocessing(20, 16, "bilinear", (0.5,) * 3, (0.25,) * 3),
        build=build, tap=lambda m: m, spatial=True))
    return featx.load_backbone("tiny_export_net", weights="none")


@pytest.mark.parametrize("execution", INSTALLED)
def test_each_runtime_gives_eager_features_on_any_batch_size_and_records_how_close(tiny_net, execution):
    runner = prepare(tiny_net, execution, CPU, batch_size=4)
    assert runner.execution == execution
    for n in (3, 5):  # the batch dimension is dynamic
        x = _images(n, 16)
        with torch.inference_mode():
            want = tiny_net(x)
        got = runner(x)
        assert got.shape == want.shape and _relative_error(want, got) < TOLERANCE
    notes = exported.read_notes(exported.graph_path(tiny_net))
    assert 0 <= notes["differences"][f"{execution}/float32"] < TOLERANCE


def test_lite0_with_its_real_weights_on_the_default_execution_gives_eager_features():
    model = featx.load_backbone()
    runner = prepare(model, "auto", CPU, batch_size=4)
    assert runner.execution in INSTALLED
    x = _images(4, 224)
    with torch.inference_mode():
        assert _relative_error(model(x), runner(x)) < TOLERANCE


@pytest.mark.skipif(len(INSTALLED) < 2, reason="needs both ONNX Runtime and OpenVINO")
def test_auto_races_the_runtimes_on_its_first_batches_then_runs_and_remembers_the_fastest(
        own_hub, tiny_net, caplog):
    runner = prepare(tiny_net, "auto", CPU, batch_size=4)
    assert isinstance(runner, Race)
    x = _images(4, 16)
    with torch.inference_mode():
        want = tiny_net(x)
    with caplog.at_level(logging.INFO, logger="featx"):
        # each runtime's warm-up turn, then RACE_BATCHES timed turns each; the next call decides
        for _ in range((RACE_BATCHES + 1) * len(INSTALLED) + 1):
            assert _relative_error(want, runner(x)) < TOLERANCE
    assert runner.execution in INSTALLED
    notes = exported.read_notes(exported.graph_path(tiny_net))
    (key, choice), = notes["choices"].items()
    assert cpu.describe() in key and choice["execution"] == runner.execution
    assert set(choice["images_per_second"]) == set(INSTALLED)
    assert any(f"{runner.execution} is fastest" in m for m in caplog.messages)
    again = prepare(tiny_net, "auto", CPU, batch_size=4)
    assert isinstance(again, exported.Exported) and again.execution == runner.execution


def test_a_runtime_whose_features_differ_is_refused_in_one_line_and_torch_runs(
        tiny_net, monkeypatch, caplog):
    real = exported.SESSIONS["onnxruntime"]

    def one_percent_off(*args):
        run = real(*args)
        return lambda x: run(x) * 1.01

    monkeypatch.setitem(exported.SESSIONS, "onnxruntime", one_percent_off)
    with caplog.at_level(logging.WARNING, logger="featx"):
        runner = prepare(tiny_net, "onnxruntime", CPU, batch_size=4)
    assert runner.execution == "fold"
    message, = caplog.messages
    assert "onnxruntime (float32) gives features 1.0e-02 (relative) from eager ones, more than " \
           "1e-04: running it in torch instead" in message


def test_a_base_that_cannot_be_exported_runs_in_torch_with_one_line_saying_why(
        own_hub, tiny_net, monkeypatch, caplog):
    def fails(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::strange\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fails)
    with caplog.at_level(logging.WARNING, logger="featx"):
        runner = prepare(tiny_net, "auto", CPU, batch_size=4)
    assert runner.execution == "fold"
    assert caplog.messages == ["tiny_export_net cannot be exported to ONNX (RuntimeError: Unsupported "
                               "operator aten::strange): running it in torch instead"]
    assert not list(exported.folder().glob("*.tmp"))  # nothing half-written is left


def test_a_runtime_that_cannot_run_the_graph_is_refused_in_one_line_and_torch_runs(
        tiny_net, monkeypatch, caplog):
    def unsupported(*args):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an "
                           "implementation for Foo(23)\nstack")

    monkeypatch.setitem(exported.SESSIONS, "onnxruntime", unsupported)
    with caplog.at_level(logging.WARNING, logger="featx"):
        runner = prepare(tiny_net, "onnxruntime", CPU, batch_size=4)
    assert runner.execution == "fold"
    assert caplog.messages == ["tiny_export_net does not run on onnxruntime (RuntimeError: "
                               "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an "
                               "implementation for Foo(23)): running it in torch instead"]


def test_a_torch_home_featx_cannot_write_is_one_line_and_torch_runs(tiny_net, tmp_path, monkeypatch,
                                                                      caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "torch"))  # no folder can be made there
    with caplog.at_level(logging.WARNING, logger="featx"):
        runner = prepare(tiny_net, "auto", CPU, batch_size=4)
    assert runner.execution == "fold"
    message, = caplog.messages
    assert message.startswith("cannot write ") and message.endswith(
        "(Not a directory): set TORCH_HOME to a folder featx may write, to export tiny_export_net: "
        "running it in torch instead")


def test_a_runtime_not_installed_is_one_line_before_any_scan(monkeypatch, tmp_path):
    monkeypatch.setattr(exported, "installed", lambda: ["onnxruntime"])
    with pytest.raises(featx.ConfigError, match=r"^`execution` openvino needs the openvino package: "
                                                r"pip install openvino$"):
        featx.extract(tmp_path / "not-scanned", **fast(execution="openvino"))


def test_the_runtimes_are_refused_on_a_gpu(tiny_net):
    with pytest.raises(featx.ConfigError, match=r"^`execution` openvino runs on a CPU: on cuda leave "
                                                r"out `execution`, or pass `device` cpu$"):
        prepare(tiny_net, "openvino", torch.device("cuda"), batch_size=4)


def test_bfloat16_where_the_cpu_has_none_is_one_line_naming_the_cpu(tiny_net, monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    none = r"^`dtype` bfloat16 needs a CPU with native bfloat16 \(AVX-512 BF16 or AMX\); this one " \
           r"\(.*\) has none: use `dtype` float32$"
    with pytest.raises(featx.ConfigError, match=none):
        prepare(tiny_net, "auto", CPU, batch_size=4, dtype="bfloat16")
    with pytest.raises(featx.ConfigError, match=none):  # before any folder is scanned
        featx.extract(tmp_path / "not-scanned", dtype="bfloat16", **fast())
    for execution in ("onnxruntime", "fold"):
        with pytest.raises(featx.ConfigError, match=rf"^`dtype` bfloat16 runs on OpenVINO on a CPU, "
                                                    rf"not {execution}"):
            prepare(tiny_net, execution, CPU, batch_size=4, dtype="bfloat16")


@needs_openvino
def test_bfloat16_runs_openvino_in_bf16_and_its_features_never_share_a_float32_cache(
        tmp_path, monkeypatch):
    asked = []
    real = exported.SESSIONS["openvino"]

    def spy(path, dtype, threads):
        asked.append(dtype)
        return real(path, dtype, threads)

    # Where the CPU has no bf16 OpenVINO computes float32 whatever it is asked: what is checked
    # here is what featx asks for, and how it keys and stores the result.
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    monkeypatch.setitem(exported.SESSIONS, "openvino", spy)
    data = write_folder(tmp_path / "data", {"": 2})
    out = tmp_path / "features.h5"
    featx.extract(data, out=out, dtype="float32", **fast())
    float32_key = featx.open_cache(out).attrs["config_key"]
    asked.clear()  # auto may have timed OpenVINO in float32 for that one
    half = featx.extract(data, out=out, dtype="bfloat16", **fast())
    assert not half.up_to_date and half.n_reused == 0 and half.execution == "openvino"
    assert asked == ["bfloat16"]
    fc = featx.open_cache(half.path)
    assert fc.attrs["dtype"] == "bfloat16" and fc.features.dtype == np.float32
    assert fc.attrs["config_key"] != float32_key


@pytest.mark.parametrize("native, execution, runtimes, want", [
    (True, "auto", ["onnxruntime", "openvino"], "bfloat16"),
    (True, "openvino", ["openvino"], "bfloat16"),
    (True, "onnxruntime", ["onnxruntime", "openvino"], "float32"),
    (True, "auto", ["onnxruntime"], "float32"),
    (False, "auto", ["onnxruntime", "openvino"], "float32"),
])
def test_a_cpu_extracts_in_bfloat16_by_default_only_where_it_computes_it_natively_on_openvino(
        monkeypatch, native, execution, runtimes, want):
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: native)
    monkeypatch.setattr(exported, "installed", lambda: runtimes)
    placement = featx.place(featx.Runtime(device="cpu", execution=execution)).placement
    assert placement.dtype == want
    # why, in words that name what to change where float32 is not the CPU's own choice
    assert ("computes it natively" in placement.why_dtype) == (want == "bfloat16")
    if native and want == "float32":
        assert "openvino" in placement.why_dtype.lower() or execution in placement.why_dtype
    assert featx.place(featx.Runtime(device="cpu", execution=execution), dtype="float32"
                       ).placement.dtype == "float32"


def test_features_of_any_float32_execution_share_one_cache(tmp_path):
    data = write_folder(tmp_path / "data", {"": 2})
    out = tmp_path / "features.h5"
    first = featx.extract(data, out=out, **fast(execution=INSTALLED[0] if INSTALLED else "fold"))
    attrs = featx.open_cache(first.path).attrs
    assert attrs["execution"] == first.execution and attrs["dtype"] == "float32"
    assert featx.extract(data, out=out, **fast(execution="eager")).up_to_date


def test_the_runtime_chosen_is_said_in_the_summary_and_recorded_in_the_cache(own_hub, tiny_net, tmp_path):
    data = write_folder(tmp_path / "data", {"": 5})
    r = featx.extract(data, "tiny_export_net", out=tmp_path / "f.h5", **fast(batch_size=1))
    assert r.execution in INSTALLED and f"img/s on {r.execution} ->" in summary(r)
    assert featx.open_cache(r.path).attrs["execution"] == r.execution
