"""The frozen feature extractor built from a registered backbone: uint8 images in, features out;
and the fine-tuned base written back as weights any ``load_backbone`` can read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsUnavailableError, first_line
from ..util.files import sha256_file
from ..util.state_file import write_tensors
from .blocks import children
from .identity import FeatureIdentity
from .layers import catch, caught, cut
from .preprocessing import Preprocessing
from .registry import DEFAULT_BACKBONE, get_backbone
from .shapes import feature_dim, layer_shapes, meta_base, meta_input
from .spec import BackboneSpec, check_pool
from .weights import Weights, resolve


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if pool == "flatten":
        return x.flatten(1)
    over = (1,) if x.ndim == 3 else (2, 3)  # a transformer's tokens, or a feature map's positions
    return x.mean(over) if pool == "avg" else x.amax(over)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a run takes from a backbone, checked once (``feature_spec``): the
    ``backbone``'s spec, its ``pool``ing and the ``layers`` inside its base whose outputs are
    the features (none: the base's own output)."""

    backbone: BackboneSpec
    pool: str = "avg"
    layers: tuple[str, ...] = ()

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.backbone, self.pool, self.layers)


def feature_spec(backbone: str | BackboneSpec = DEFAULT_BACKBONE, pool: str = "avg",
                 layers: tuple[str, ...] = ()) -> FeatureSpec:
    """``backbone`` (a registered name or a spec) with ``pool`` and ``layers`` (``backbone_layers``
    lists them), refused in one line unless the backbone allows them: on its structure alone,
    without weights or memory, so before any long scan or model load."""
    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone)
    layers = tuple(layers)
    check_pool(spec, pool, inside=bool(layers))
    if layers:
        layer_shapes(spec, layers)  # names checked on the dry run
    return FeatureSpec(spec, pool, layers)


class FeatureExtractor(nn.Module):
    """A frozen backbone: uint8 images (N×3×H×W) in, one feature vector per image out: the
    base's own output, or with ``layers`` the outputs of those modules of it, each pooled, one
    after the other."""

    def __init__(self, features: FeatureSpec, weights: Weights):
        super().__init__()
        spec = features.backbone
        self.features, self.spec, self.weights = features, spec, weights
        self.pool, self.layers = features.pool, features.layers
        model = spec.build()
        if weights.path is not None:
            try:
                model.load_state_dict(spec.convert_state_dict(weights.load()))
            except (RuntimeError, KeyError, ValueError, TypeError) as e:  # another model's tensors
                raise WeightsUnavailableError(
                    f"{weights.path} is not a state dict of {spec.name} ({first_line(e)}): pass the "
                    f"weights file of a {spec.name}, or leave out `weights`") from e
        self.base = spec.tap(model)
        if self.layers:
            self.base = cut(self.base, self.layers, spec.name)
            catch(self.base, self.layers)
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
        return self.features.feature_dim

    def identity(self) -> FeatureIdentity:
        """What makes these features what they are: stored in every cache and bundle."""
        return FeatureIdentity(backbone=self.spec.name, weights_sha256=self.weights.sha256,
                               pool=self.pool, feature_dim=self.feature_dim,
                               input_size=self.preprocessing.crop_size,
                               preprocessing=self.preprocessing.to_dict(),
                               weights_file=self.weights.path.name if self.weights.path else "",
                               layers=",".join(self.layers))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.shift.dtype) - self.shift) * self.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.base(self.normalise(images))
        if self.layers:
            maps = caught(self.base, self.layers)
            if self.spec.channels_last:
                maps = [x.permute(0, 3, 1, 2) if x.ndim == 4 else x for x in maps]
            return torch.cat([_pool(x, self.pool) for x in maps], 1)
        return _pool(out, self.pool)


def blocks(extractor: FeatureExtractor) -> list[nn.Module]:
    """The extractor's base in the units ``--unfreeze top:N`` counts, lowest first; with
    ``layers``, those up to the last one that holds (or is inside) one of them, as nothing past
    it shapes the features."""
    found = (extractor.spec.blocks or children)(extractor.base)
    if not extractor.layers:
        return found
    # A unit is reached when it shares a module with a layer: it holds the layer, or is inside it.
    inside = {id(m) for layer in extractor.layers for m in extractor.base.get_submodule(layer).modules()}
    reached = [i for i, unit in enumerate(found) if any(id(m) in inside for m in unit.modules())]
    # A layer without weights (a pooling) of a base cut after it is in no unit: all are below it.
    return found[:max(reached) + 1] if reached else found


def save_weights(extractor: FeatureExtractor, path: str | os.PathLike) -> Weights:
    """Write the extractor's (fine-tuned) base as a whole state dict of its backbone, in
    safetensors (data, never a pickle), which ``load_backbone(name, weights=path)`` reads like
    any downloaded weights."""
    path = Path(path)
    spec = extractor.spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as load_backbone seeds a random base
        model = spec.build()
    if extractor.weights.path is not None:  # what the tap drops, or a cut base never ran, as loaded
        model.load_state_dict(spec.convert_state_dict(extractor.weights.load()))
    # The state dict shares storage with the parameters, so it sees the values loaded through the
    # tap. A base cut at ``layers`` holds only the part up to it: the rest is as it was loaded.
    whole = model.state_dict()
    spec.tap(model).load_state_dict(extractor.base.state_dict(), strict=not extractor.layers)
    write_tensors(path, {k: v.contiguous() for k, v in whole.items()})
    return Weights(path, sha256_file(path))


def load_backbone(backbone: str | FeatureSpec = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                  pool: str = "avg", layers: tuple[str, ...] = ()) -> FeatureExtractor:
    """Build a frozen feature extractor of ``backbone``: a registered name, taken with ``pool``
    and ``layers`` (module names of the base, ``backbone_layers``, whose outputs, pooled, are the
    features instead of the base's own output), or a ``FeatureSpec`` already checked, which says
    both. ``weights``: None (default weights), "none" (random, seeded), or a path."""
    features = backbone if isinstance(backbone, FeatureSpec) else feature_spec(backbone, pool, layers)
    resolved = resolve(features.backbone, weights)
    if resolved.path is None:
        # Random init is seeded so that a cache made with it can be recognised as up to date.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return FeatureExtractor(features, resolved)
    return FeatureExtractor(features, resolved)


def backbone_layers(name: str) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """Each module of the backbone's base, what ``--layer`` takes: its name, type and the shape
    of one image's output (None where that is not one tensor, or the module does not run)."""
    spec = get_backbone(name)
    base = meta_base(spec)
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def keep(_module, _args, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])
        return keep

    for name, module in base.named_modules():
        if name:
            module.register_forward_hook(hook(name))
    base(meta_input(spec))
    return [(name, type(m).__name__, shapes.get(name)) for name, m in base.named_modules() if name]
