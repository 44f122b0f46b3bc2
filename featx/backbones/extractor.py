"""The frozen feature extractor built from a registered backbone: uint8 images in, features out;
and the fine-tuned base written back as weights any ``load_backbone`` can read."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsUnavailableError, first_line
from ..files import sha256_file
from ..identity import FeatureIdentity
from ..state_file import write_tensors
from .preprocessing import Preprocessing
from .registry import DEFAULT_BACKBONE, get_backbone
from .spec import BackboneSpec, check_pool
from .weights import Weights, resolve


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if pool == "avg":
        return x.mean((2, 3))
    if pool == "max":
        return x.amax((2, 3))
    return x.flatten(1)


class FeatureExtractor(nn.Module):
    """A frozen backbone: uint8 images (N×3×H×W) in, one feature vector per image out."""

    def __init__(self, spec: BackboneSpec, weights: Weights, pool: str = "avg"):
        super().__init__()
        self.spec, self.weights, self.pool = spec, weights, check_pool(spec, pool)
        model = spec.build()
        if weights.path is not None:
            try:
                model.load_state_dict(spec.convert_state_dict(weights.load()))
            except (RuntimeError, KeyError, ValueError, TypeError) as e:  # another model's tensors
                raise WeightsUnavailableError(
                    f"{weights.path} is not a state dict of {spec.name} ({first_line(e)}): pass the "
                    f"weights file of a {spec.name}, or leave out --weights") from e
        self.base = spec.tap(model)
        p = spec.preprocessing
        # (x/255 - mean)/std as one multiply-add on the raw uint8 values.
        self.register_buffer("shift", torch.tensor(p.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale", 1 / (torch.tensor(p.std).view(1, 3, 1, 1) * 255))
        self.requires_grad_(False)
        self.eval()

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim(self.pool)

    def identity(self) -> FeatureIdentity:
        """What makes these features what they are: stored in every cache and bundle."""
        return FeatureIdentity(backbone=self.spec.name, weights_sha256=self.weights.sha256,
                               pool=self.pool, feature_dim=self.feature_dim,
                               input_size=self.preprocessing.crop_size,
                               preprocessing=self.preprocessing.to_dict(),
                               weights_file=self.weights.path.name if self.weights.path else "")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.shift.dtype) - self.shift) * self.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _pool(self.base(self.normalise(images)), self.pool)


def blocks(base: nn.Module) -> list[nn.Module]:
    """The base's stages in forward order, the units ``--unfreeze top:N`` counts: its children
    that hold parameters, looked for one level further down while there is only one."""
    found = [base]
    while len(found) == 1:
        inner = [c for c in found[0].children() if next(c.parameters(), None) is not None]
        if not inner:
            break
        found = inner
    return found


def save_weights(extractor: FeatureExtractor, path: str | os.PathLike) -> Weights:
    """Write the extractor's (fine-tuned) base as a whole state dict of its backbone, in
    safetensors (data, never a pickle), which ``load_backbone(name, weights=path)`` reads like
    any downloaded weights."""
    path = Path(path)
    model = extractor.spec.build()
    # The state dict shares storage with the parameters, so it sees the values loaded through the
    # tap; and it still holds what the tap drops (the classifier), so it loads strictly.
    whole = model.state_dict()
    extractor.spec.tap(model).load_state_dict(extractor.base.state_dict())
    write_tensors(path, {k: v.contiguous() for k, v in whole.items()})
    return Weights(path, sha256_file(path))


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                  pool: str = "avg") -> FeatureExtractor:
    """Build a frozen feature extractor; ``weights``: None (default weights), "none", or a path."""
    spec = get_backbone(name)
    check_pool(spec, pool)
    resolved = resolve(spec, weights)
    if resolved.path is None:
        # Random init is seeded so that a cache made with it can be recognised as up to date.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return FeatureExtractor(spec, resolved, pool)
    return FeatureExtractor(spec, resolved, pool)
