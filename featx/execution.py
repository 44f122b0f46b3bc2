"""How the frozen base is run during extraction: eagerly, with BatchNorm folded into the
convolutions, or compiled by ``torch.compile``.

A frozen network in inference mode computes ``BN(conv(x))`` as one affine map, so folding the
BatchNorm's scale and shift into the convolution's weight and bias drops a full pass over every
feature map. Which convolution feeds which BatchNorm is read off a real forward pass, not off the
module tree, so it works for any backbone; the folded copy is then checked against the original on
that same batch; if its features differ by more than ``TOLERANCE`` the model runs eagerly.

``compile`` adds ``torch.compile`` (operator fusion, weights pre-packed for oneDNN) on top of the
fold. It compiles for a minute or more, and on a 2-core CPU it measured no faster than the fold
alone, so it is never the default: use it where a benchmark shows that it pays.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .backbones import FeatureExtractor
from .errors import ConfigError

log = logging.getLogger(__name__)

EXECUTIONS = ("eager", "fold", "compile")
DEFAULT_EXECUTION = "fold"
# Largest difference allowed between a folded model's features and eager ones, relative to the
# largest feature. float32 rounding alone gives ~1e-6 here; a wrongly folded layer gives ~1.
TOLERANCE = 1e-4


def _bn_pairs(base: nn.Module, probe: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, BatchNorm) pairs where the BatchNorm's input is exactly that convolution's
    output, as seen on one forward pass of ``probe``."""
    made_by: dict[int, nn.Conv2d] = {}
    outputs: list[torch.Tensor] = []  # kept alive so that no two outputs share an id()
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(conv, _, out):
        outputs.append(out)
        made_by[id(out)] = conv

    def before_bn(bn, args):
        conv = made_by.get(id(args[0]))
        if conv is not None and bn.track_running_stats and conv.out_channels == bn.num_features:
            pairs.append((conv, bn))

    hooks = [m.register_forward_hook(after_conv) for m in base.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in base.modules()
              if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.inference_mode():
            base(probe)
    finally:
        for h in hooks:
            h.remove()
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.ndim - 1)))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def fold_batchnorm(model: FeatureExtractor, probe: torch.Tensor
                   ) -> tuple[FeatureExtractor, int, float]:
    """A copy of ``model`` with every BatchNorm that directly follows a convolution folded into
    it; how many were folded; and the largest difference of its features from ``model``'s on the
    uint8 batch ``probe``, relative to the largest feature."""
    folded = copy.deepcopy(model)
    pairs = _bn_pairs(folded.base, folded.normalise(probe))
    identity = {id(bn) for _, bn in pairs}
    for conv, bn in pairs:
        _fold(conv, bn)
    for parent in list(folded.base.modules()):
        for name, child in parent.named_children():
            if id(child) in identity:
                setattr(parent, name, nn.Identity())
    with torch.inference_mode():
        want, got = model(probe), folded(probe)
    error = ((want - got).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    return folded, len(pairs), error


def check_execution(execution: str) -> str:
    if execution not in EXECUTIONS:
        raise ConfigError(f"unknown --execution {execution!r}: choose one of {', '.join(EXECUTIONS)}")
    return execution


class _FixedBatch(nn.Module):
    """Runs the compiled model on batches of one size only, padding short batches with zeros, so
    the last batch (or one with skipped files) does not trigger a second compilation."""

    def __init__(self, compiled: nn.Module, batch_size: int):
        super().__init__()
        self.compiled, self.batch_size = compiled, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        return self.compiled(x)[:n]


def prepare(model: FeatureExtractor, execution: str, device: torch.device,
            batch_size: int) -> nn.Module:
    """The module extraction runs: uint8 images (N×3×H×W, channels_last on ``device``) in,
    features out. ``model`` itself is left as it is."""
    check_execution(execution)
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
    # freezing: weights become constants, so oneDNN convolutions get their weights pre-packed.
    return _FixedBatch(torch.compile(folded, dynamic=False, options={"freezing": True}), batch_size)
