"""The exported graph quantized to int8 (``--dtype int8``), run by OpenVINO.

Post-training static quantization by ONNX Runtime's quantizer: weights int8 per channel,
activations uint8 per tensor with ranges taken as the min and max over calibration images, written
as a QDQ ONNX graph (no package beyond featx's own). OpenVINO turns each QuantizeLinear and
DequantizeLinear pair around a convolution into an int8 one: on Lite0 it ran the graph 1.3-1.7x as
fast as bfloat16 and about twice float32 on AVX-512 VNNI. ONNX Runtime runs the same graph about as
fast but further from eager (0.43 against 0.32 on flowers photos), so OpenVINO runs it.

The quantized graph lies beside the export, named after the export and the calibration images'
``key``, written crash-safe once and reused by every later run calibrated on the same images, so
that a head fitted on its features meets the same graph when it scores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...backbones.extractor import FeatureExtractor
from ...errors import ConfigError, first_line
from ...util.files import durable_write
from . import cpu
from .exported import Refused, installed

log = logging.getLogger(__name__)

# Flags under which a CPU computes int8 dot products in one instruction; without them OpenVINO
# emulates int8 and runs slower than float32.
INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")
# Largest relative difference from eager float32 features an int8 graph may show on
# ``probe_batch``. Lite0 with its real weights, calibrated on 300 flowers photos, measured 0.10
# on the probe and 0.15-0.32 on held-out photos (bfloat16: 0.06-0.09); a graph quantized or
# exported wrongly differs by ~1.
TOLERANCE = 0.3
# Images the calibration reads per pass: ranges are a min and max over all of them, so the
# batch changes only the memory the quantizer's passes take.
CALIBRATION_BATCH = 16


def int8_supported() -> bool:
    return any(f in cpu.flags() for f in INT8_DOT)


def check() -> None:
    """Refuse, in one line, int8 where it cannot run: no int8 dot products, or no OpenVINO."""
    if not int8_supported():
        raise ConfigError(f"`dtype` int8 needs a CPU with int8 dot products (AMX-INT8, AVX-512 VNNI "
                          f"or AVX-VNNI); this one ({cpu.describe()}) has none: use `dtype` float32")
    if "openvino" not in installed():
        raise ConfigError("`dtype` int8 runs on OpenVINO: pip install openvino")


def quantized_path(graph: Path, key: str) -> Path:
    """Where ``graph`` quantized on the calibration images ``key`` names lies. The quantizer's
    version is left out of the name on purpose: a graph once made stays the one its bundles'
    heads were fitted on."""
    digest = hashlib.sha256(f"{graph.name}\0{key}".encode()).hexdigest()[:16]
    return graph.with_name(f"{graph.stem}-int8-{digest}.onnx")


def quantize(model: FeatureExtractor, graph: Path, calibration: np.ndarray, key: str) -> Path:
    """``graph``, ``model``'s export, quantized to int8 on ``calibration`` (N×3×H×W uint8 images
    as the model takes them, which ``key`` identifies), now unless it already was."""
    path = quantized_path(graph, key)
    if path.is_file():
        return path
    log.info("%s: quantizing the exported base to int8 on %d images, once for them, to %s",
             model.spec.name, len(calibration), path)
    try:
        # A temporary name of this process's own, so two runs quantizing at once never share one.
        with durable_write(path, tmp=path.with_name(f"{path.name}.{os.getpid()}.tmp")) as tmp:
            _write_quantized(graph, calibration, tmp)
    except OSError as e:
        raise Refused(f"cannot write {e.filename or path} ({e.strerror or e}): set TORCH_HOME to a "
                      f"folder featx may write, to quantize {model.spec.name}") from e
    except Exception as e:  # an operator the quantizer cannot handle: float precisions still run
        raise Refused(f"{model.spec.name} cannot be quantized to int8 ({first_line(e)})") from e
    return path


def _write_quantized(graph: Path, calibration: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as work, \
            contextlib.redirect_stdout(io.StringIO()):
        # The quantizer needs every tensor's shape, which shape inference adds to a copy.
        inferred = Path(work) / "inferred.onnx"
        quant_pre_process(str(graph), str(inferred))
        quantize_static(str(inferred), str(out), _Calibration(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


class _Calibration:
    """The calibration images in batches, as ``quantize_static`` reads them."""

    def __init__(self, images: np.ndarray):
        self.batches = iter(range(0, len(images), CALIBRATION_BATCH))
        self.images = np.ascontiguousarray(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self.batches, None)
        return None if start is None else {"images": self.images[start:start + CALIBRATION_BATCH]}


def session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The quantized graph at ``path`` on OpenVINO: uint8 images in, float32 features out."""
    import openvino as ov

    # The operations left in floating point (the input's normalisation, additions, pooling) run in
    # float32: bfloat16 there measured no faster.
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]
