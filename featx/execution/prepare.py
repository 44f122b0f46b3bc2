"""The module extraction runs for a ``Runtime.execution``: the model as it is (``eager``), with
BatchNorm folded in and checked against it (``fold``), or that compiled (``compile``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..backbones.extractor import FeatureExtractor
from .compiled import compiled
from .fold import TOLERANCE, fold_batchnorm

log = logging.getLogger(__name__)


def prepare(model: FeatureExtractor, execution: str, device: torch.device,
            batch_size: int) -> nn.Module:
    """The module extraction runs: uint8 images (N×3×H×W, channels_last on ``device``) in,
    features out. ``model`` itself is left as it is."""
    if device.type == "cuda":
        # Every batch has the same shape, so cuDNN's one-off search for the fastest convolution
        # algorithms is paid once and pays back on every batch after.
        torch.backends.cudnn.benchmark = True
    model = model.to(device, memory_format=torch.channels_last)
    if execution == "eager":
        return model
    size = model.preprocessing.crop_size
    probe = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, device=device,
                          generator=torch.Generator(device).manual_seed(0))
    folded, n, error = fold_batchnorm(model, probe.contiguous(memory_format=torch.channels_last))
    if error > TOLERANCE:
        log.warning("%s: folding BatchNorm changed the features by %.1e (relative), more than "
                    "%.0e: running it eagerly instead", model.spec.name, error, TOLERANCE)
        return model
    log.info("%s: folded %d BatchNorm layers into their convolutions", model.spec.name, n)
    if execution == "fold":
        return folded
    return compiled(folded, batch_size)
