"""The frozen base as one exported ONNX graph, run by ONNX Runtime or OpenVINO: featx's fast path
on a CPU, two to three times torch's own forward on the same cores (README, Speed).

The graph (normalisation, base and pooling, with a dynamic batch) is exported by ``torch.onnx``
once per feature identity, torch version and opset, written crash-safe under the torch hub folder
beside downloaded weights, and reused by every run after. Whenever a session is made its features
are checked against eager torch on a fixed batch; the largest difference is recorded beside the
graph, and above ``TOLERANCES`` the runtime is refused (``Refused``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...backbones.extractor import FeatureExtractor
from ...errors import ConfigError
from ...util.files import durable_write
from . import cpu
from .fold import TOLERANCE, probe_batch

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")  # each the ``execution`` and the package that runs it
# The opset both runtimes' current releases implement in full; part of the graph's key.
OPSET = 18
# Largest relative difference from eager float32 features each precision may show on
# ``probe_batch``. bfloat16 keeps 8 bits of mantissa, and Lite0's features measured 2e-2 from
# float32 ones on OpenVINO. int8: Lite0 with its real weights, calibrated on 300 flowers photos,
# measured 0.10 (and 0.15-0.32 on held-out photos). A wrongly exported or quantized graph
# differs by ~1.
TOLERANCES = {"float32": TOLERANCE, "bfloat16": 0.1, "int8": 0.3}


def computed_in(dtype: str) -> str:
    """The precision a CPU runtime computes features of ``dtype`` in: float16 features are
    float32 ones, stored rounded."""
    return dtype if dtype in ("bfloat16", "int8") else "float32"


class Refused(Exception):
    """The graph could not be exported, or a runtime's features differ from eager ones by more
    than the tolerance: the message says which, in one line."""


def folder() -> Path:
    return Path(torch.hub.get_dir()) / "featx" / "exports"


def graph_path(model: FeatureExtractor) -> Path:
    key = f"{model.identity().key('float32')}\0{torch.__version__}\0{OPSET}"
    return folder() / f"{model.spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def export(model: FeatureExtractor) -> Path:
    """The ONNX graph of ``model`` (on the CPU), exported now unless it already was."""
    path = graph_path(model)
    if path.is_file():
        return path
    log.info("%s: exporting the frozen base to ONNX, once for these weights, to %s",
             model.spec.name, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_graph(model, probe_batch(model), path, "features", model.spec.name)
    except OSError as e:  # a read-only or full TORCH_HOME: torch still runs the model
        raise Refused(f"cannot write {e.filename or path} ({e.strerror or e}): set TORCH_HOME to a "
                      f"folder featx may write, to export {model.spec.name}") from e
    return path


def write_graph(module: torch.nn.Module, example: torch.Tensor, path: Path, output: str,
                name: str, metadata: dict[str, str] | None = None) -> None:
    """``module`` (uint8 images in, as ``example``) as an ONNX graph at ``path``, written
    crash-safe, its batch dynamic, its output named ``output`` and ``metadata`` its
    ``metadata_props``; raises ``Refused`` naming ``name`` where the exporter cannot trace it."""
    # A temporary name of this process's own, so two runs exporting at once never share one.
    with durable_write(path, tmp=path.with_name(f"{path.name}.{os.getpid()}.tmp")) as tmp, \
            warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # The exporter reports each of its steps on stdout and warns about shapes it has fixed.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), tmp, dynamo=True, opset_version=OPSET,
                              input_names=["images"], output_names=[output], external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        except Exception as e:  # whatever the exporter cannot trace, the model still runs in torch
            raise Refused(f"{name} cannot be exported to ONNX ({_first_line(e)})") from e
        if metadata:
            import onnx

            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, metadata)
            onnx.save(graph, str(tmp))


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _onnxruntime(path: Path, dtype: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Spinning threads would hold the cores that the decoding workers, at low priority, need
    # between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def _openvino(path: Path, dtype: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    # An int8 graph's own quantized operations run in int8; those left in floating point (the
    # input's normalisation, additions, pooling) in float32, as bfloat16 there measured no faster.
    precision = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}[dtype]
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


SESSIONS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def installed() -> list[str]:
    """The exported-graph runtimes this environment has, in ``RUNTIMES``'s order."""
    import importlib.util

    return [name for name in RUNTIMES if importlib.util.find_spec(name)]


def check(execution: str, dtype: str, device: str = "cpu") -> None:
    """Refuse, in one line, what cannot run on ``device`` (a type: cpu, cuda): a runtime on a GPU
    or not installed, or a precision that ``execution`` or this CPU cannot compute natively."""
    if execution in RUNTIMES and device != "cpu":
        raise ConfigError(f"`execution` {execution} runs on a CPU: on {device} leave out "
                          f"`execution`, or pass `device` cpu")
    if execution in RUNTIMES and execution not in installed():
        raise ConfigError(f"`execution` {execution} needs the {execution} package: "
                          f"pip install {execution}")
    if dtype == "int8" and device != "cpu":
        raise ConfigError(f"`dtype` int8 runs on a CPU: on {device} leave out `dtype`, or pass "
                          f"`device` cpu")
    if dtype not in ("bfloat16", "int8") or device != "cpu":
        return
    if execution not in ("auto", "openvino"):
        raise ConfigError(f"`dtype` {dtype} runs on OpenVINO on a CPU, not {execution}: leave out "
                          f"`execution` or pass `execution` openvino")
    if dtype == "bfloat16" and not cpu.has_native_bf16():
        raise ConfigError(f"`dtype` bfloat16 needs a CPU with native bfloat16 (AVX-512 BF16 or "
                          f"AMX); this one ({cpu.describe()}) has none: use `dtype` float32")
    if dtype == "int8" and not cpu.has_int8_dot():
        raise ConfigError(f"`dtype` int8 needs a CPU with int8 dot products (AMX-INT8, AVX-512 "
                          f"VNNI or AVX-VNNI); this one ({cpu.describe()}) has none: use `dtype` "
                          f"float32")
    if "openvino" not in installed():
        raise ConfigError(f"`dtype` {dtype} on a CPU runs on OpenVINO: pip install openvino")


class Exported:
    """``model``'s exported graph (or ``graph``, that quantized: ``quantized``) in the runtime
    ``execution``: uint8 images in, features out, like the model itself, for what ``check`` lets
    through. ``difference``: the largest relative difference of its features from eager ones on
    ``probe_batch``; raises ``Refused`` above the dtype's tolerance."""

    def __init__(self, model: FeatureExtractor, execution: str, dtype: str = "float32",
                 graph: Path | None = None):
        self.execution, precision = execution, computed_in(dtype)
        path = graph or export(model)
        probe = probe_batch(model)
        try:
            self.session = SESSIONS[execution](path, precision, torch.get_num_threads())
            got = self(probe).numpy()
        except Exception as e:  # an operator or graph this runtime's version cannot run
            raise Refused(f"{model.spec.name} does not run on {execution} ({_first_line(e)})") from e
        with torch.inference_mode():
            want = model(probe).numpy()
        self.difference = float(np.abs(want - got).max() / max(np.abs(want).max(), 1e-12))
        record(path, f"{execution}/{precision}", self.difference)
        if self.difference > TOLERANCES[precision]:
            raise Refused(f"{model.spec.name} on {execution} ({precision}) gives features "
                          f"{self.difference:.1e} (relative) from eager ones, more than "
                          f"{TOLERANCES[precision]:.0e}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.session(images.contiguous().numpy())))


def notes_path(graph: Path) -> Path:
    return graph.with_suffix(".json")


def read_notes(graph: Path) -> dict:
    """What was recorded beside a graph: ``differences`` per runtime and dtype, and ``choices``
    (the fastest runtime per CPU and dtype, with the rates that chose it)."""
    try:
        return json.loads(notes_path(graph).read_text())
    except (OSError, ValueError):
        return {}


def record(graph: Path, key: str, value, section: str = "differences") -> None:
    """Note ``value`` beside the graph. Notes only save work: one that cannot be written, or that
    a run writing at the same moment replaces, costs a race again, never a run."""
    notes = read_notes(graph)
    notes.setdefault(section, {})[key] = value
    path = notes_path(graph)
    try:
        with durable_write(path, tmp=path.with_name(f"{path.name}.{os.getpid()}.tmp")) as tmp:
            tmp.write_text(json.dumps(notes, indent=1, sort_keys=True))
    except OSError as e:
        log.warning("cannot write %s (%s): what it would note is measured again next time",
                    path, e.strerror or e)
