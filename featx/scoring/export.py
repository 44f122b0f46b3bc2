"""A bundle as one ONNX model, for use without featx or torch: uint8 images (N×3×S×S, resized and
centre-cropped as the bundle's preprocessing says) in, class probabilities out, with the
normalisation, the frozen (or fine-tuned) base, the pooling and the head inside, and the class
names and the preprocessing as the model's metadata (``metadata_props``: ``classes``,
``preprocessing``, both JSON)."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..bundle import Bundle, backbone_for, load_bundle
from ..errors import ConfigError
from ..extraction.execution.exported import Refused, write_graph
from ..extraction.execution.fold import probe_batch
from ..finetuning.model import Classifier
from ..heads.torch_head import as_torch_head
from ..util.files import check_replaceable

# How an ONNX file torch writes begins (its IR version, then producer "pytorch"): what ``out`` may
# replace without ``force``.
ONNX_START = re.compile(rb"\x08.\x12\x07pytorch", re.DOTALL)
# Largest difference of the exported probabilities from the bundle's head on eager float32
# features of the same images: a float32 graph gives them to ~1e-6; a wrong one is off by ~1.
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    classes: list[str]
    difference: float  # largest |Δp| from the bundle's head on eager features, on a fixed batch
    seconds: float


def export(bundle: str | os.PathLike | Bundle, out: str | os.PathLike | None = None,
           weights: str | os.PathLike | None = None, force: bool = False) -> ExportResult:
    """Write ``bundle`` as one float32 ONNX model to ``out`` (default: ``BUNDLE.onnx`` beside
    the bundle), whatever precision its features were extracted in, and check it against the
    bundle's head on a fixed batch. Logistic, linear and mlp heads export. ``weights``: as for
    ``score``. ``force``: replace a file at ``out`` that is no ONNX model torch wrote."""
    start = time.perf_counter()
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if out is None and b.path is None:
        raise ConfigError("the bundle has no folder to export beside: give `out`")
    path = Path(out) if out else Path(f"{b.path}.onnx")
    if path.suffix != ".onnx":
        raise ConfigError(f"`out` {path} is no .onnx file: give a path ending in .onnx")
    check_replaceable(path, ONNX_START, b.own_files(), force)
    try:
        head = as_torch_head(b.head)
    except ConfigError:
        raise ConfigError(f"{b.path}: its {b.model} head does not export (logistic, linear and mlp "
                          f"heads do): fit one with `featx fit-head --model logistic`") from None
    extractor = backbone_for(b, weights).eval()
    net = nn.Sequential(Classifier(extractor, head.module_.float()), nn.Softmax(dim=1)).eval()
    metadata = {"classes": json.dumps(b.classes), "preprocessing": json.dumps(b.identity.preprocessing)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_graph(net, probe_batch(extractor), path, "probabilities", extractor.spec.name, metadata)
    except Refused as e:
        raise ConfigError(str(e)) from e
    except OSError as e:
        raise ConfigError(f"cannot write {e.filename or path} ({e.strerror or e}): choose another "
                          f"`out`") from e
    difference = _difference(path, b, extractor)
    if difference > TOLERANCE:
        path.unlink()
        raise ConfigError(f"the exported {b.path} gives probabilities {difference:.1e} from its own "
                          f"head's, more than {TOLERANCE:.0e}: it was not kept")
    return ExportResult(path, list(b.classes), difference, time.perf_counter() - start)


def _difference(path: Path, b: Bundle, extractor: nn.Module) -> float:
    """Largest difference between the graph's probabilities and the bundle's head on eager
    features, on seeded random images."""
    import onnxruntime as ort

    size = b.identity.input_size
    images = np.random.default_rng(0).integers(0, 256, (4, 3, size, size), dtype=np.uint8)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0]
    with torch.inference_mode():
        want = b.predict_proba(extractor(torch.from_numpy(images)).numpy())
    return float(np.abs(got - want).max())
