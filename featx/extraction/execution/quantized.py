"""The exported graph quantized to int8 (``--dtype int8``), which OpenVINO runs (``exported``).

Post-training static quantization by ONNX Runtime's quantizer: weights int8 per channel,
activations uint8 per tensor with ranges taken as the min and max over calibration images, written
as a QDQ ONNX graph (no package beyond featx's own). OpenVINO turns each QuantizeLinear and
DequantizeLinear pair around a convolution into an int8 one: on Lite0 it ran the graph 1.3-1.7x as
fast as bfloat16 and about twice float32 on AVX-512 VNNI. ONNX Runtime runs the same graph about as
fast but further from eager (0.43 against 0.32 on flowers photos), so OpenVINO runs it. NNCF's
own quantization of the same base lost 1-1.6 points of the probe on flowers128, this none.

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
from pathlib import Path

import numpy as np

from ...backbones.extractor import FeatureExtractor
from ...errors import first_line
from ...util.files import durable_write
from .exported import Refused

log = logging.getLogger(__name__)

# Images the calibration reads per pass: ranges are a min and max over all of them, so the
# batch changes only the memory the quantizer's passes take.
CALIBRATION_BATCH = 16


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
