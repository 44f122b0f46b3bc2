"""BatchNorm folded into the convolution feeding it, for a frozen base.

A frozen network in inference mode computes ``BN(conv(x))`` as one affine map, so folding the
BatchNorm's scale and shift into the convolution's weight and bias drops a full pass over every
feature map. Which convolution feeds which BatchNorm is read off a real forward pass, not off the
module tree, so it works for any backbone; the folded copy is then checked against the original on
that same batch; if its features differ by more than ``TOLERANCE`` the model runs eagerly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_weights

from ...backbones.extractor import FeatureExtractor

# Largest difference allowed between a folded model's features and eager ones, relative to the
# largest feature. float32 rounding alone gives ~1e-6 here; a wrongly folded layer gives ~1.
TOLERANCE = 1e-4


def probe_batch(model: FeatureExtractor) -> torch.Tensor:
    """The fixed batch every execution is checked on: two seeded random uint8 images."""
    size = model.preprocessing.crop_size
    return torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


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
    conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                  bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_batchnorm(model: FeatureExtractor, probe: torch.Tensor
                   ) -> tuple[FeatureExtractor, int, float]:
    """A copy of ``model`` with every BatchNorm that directly follows a convolution folded into
    it; how many were folded; and the largest difference of its features from ``model``'s on the
    uint8 batch ``probe``, relative to the largest feature."""
    folded = copy.deepcopy(model)
    # A layer the features are caught at (``layers``) keeps its own output: neither folded nor gone.
    caught = {id(folded.base.get_submodule(layer)) for layer in folded.layers}
    pairs = [(conv, bn) for conv, bn in _bn_pairs(folded.base, folded.normalise(probe))
             if id(conv) not in caught and id(bn) not in caught]
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
