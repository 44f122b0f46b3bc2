"""The backbone registry, and the frozen feature extractor built from a registered backbone."""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import weights as weights_mod
from .errors import ConfigError, UnknownBackboneError
from .preprocessing import Preprocessing

DEFAULT_BACKBONE = "efficientnet_lite0"
POOLS = ("avg", "max", "flatten")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything featx knows about a backbone before building it.

    ``build`` makes the full classifier with random weights; ``tap`` takes the part of it featx
    keeps: a feature map when ``spatial``, else the model's own pooled vector.
    """

    name: str
    source: str
    preprocessing: Preprocessing
    build: Callable[[], nn.Module]
    tap: Callable[[nn.Module], nn.Module]
    spatial: bool
    weights_url: str | None = None
    weights_file: Path | None = None
    convert_state_dict: Callable[[dict], dict] = field(default=lambda sd: sd)
    # How many of the base's top ``blocks`` fine-tuning unfreezes by default; None: the top third.
    finetune_top: int | None = None

    def feature_dim(self, pool: str = "avg") -> int:
        return _feature_dim(self, check_pool(self, pool))


_REGISTRY: dict[str, BackboneSpec] = {}
_BUILTIN_LOADED = False


def register(spec: BackboneSpec) -> None:
    """Add a backbone; a name already taken is refused rather than silently replaced."""
    _add(_registry(), spec)


def _add(registry: dict[str, BackboneSpec], spec: BackboneSpec) -> None:
    if spec.name in registry:
        raise ValueError(f"a backbone named {spec.name!r} is already registered")
    registry[spec.name] = spec


def _registry() -> dict[str, BackboneSpec]:
    # Filled on first use: importing torchvision's model zoo costs seconds that `featx --help`
    # should not pay.
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        from . import efficientnet_lite, torchvision_zoo

        for spec in [efficientnet_lite.spec(), *torchvision_zoo.specs()]:
            _add(_REGISTRY, spec)
        _BUILTIN_LOADED = True
    return _REGISTRY


def list_backbones() -> list[str]:
    return list(_registry())


def get_backbone(name: str) -> BackboneSpec:
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}: {hint}`featx backbones` lists the {len(registry)} available")
    return registry[name]


def check_pool(spec: BackboneSpec, pool: str) -> str:
    if pool not in POOLS:
        raise ConfigError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    if pool != "avg" and not spec.spatial:
        raise ConfigError(f"{spec.name} has no convolutional feature map, so --pool {pool} is not "
                          f"possible: use --pool avg (its own pooled representation)")
    return pool


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if pool == "avg":
        return x.mean((2, 3))
    if pool == "max":
        return x.amax((2, 3))
    return x.flatten(1)


def _shapes_file() -> Path:
    import torchvision

    from . import __version__

    name = f"output_shapes-featx{__version__}-torchvision{torchvision.__version__}.json"
    return Path(torch.hub.get_dir()).parent / "featx" / name


@functools.cache
def _output_shape(spec: BackboneSpec) -> tuple[int, ...]:
    """Shape of one image's output of the tap, from a dry run on the meta device (no memory, no
    weights, no image), remembered on disk because listing all backbones costs half a minute."""
    path = _shapes_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    key = f"{spec.name}@{spec.preprocessing.crop_size}"
    if key not in known:
        try:
            with torch.device("meta"):
                base = spec.tap(spec.build())
        except NotImplementedError:  # RegNet's constructor computes its widths with real tensors
            base = spec.tap(spec.build()).to("meta")
        size = spec.preprocessing.crop_size
        known[key] = list(base.eval()(torch.empty(1, 3, size, size, device="meta")).shape[1:])
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, sort_keys=True))
            os.replace(tmp, path)
    return tuple(known[key])


def _feature_dim(spec: BackboneSpec, pool: str) -> int:
    shape = _output_shape(spec)
    return int(torch.Size(shape).numel()) if pool == "flatten" else shape[0]


def _json_roundtrip(d: dict) -> dict:
    # Tuples become lists, as they will be when read back from a cache or bundle.
    return json.loads(json.dumps(d))


class FeatureExtractor(nn.Module):
    """A frozen backbone: uint8 images (N×3×H×W) in, one feature vector per image out."""

    def __init__(self, spec: BackboneSpec, weights: weights_mod.Weights, pool: str = "avg"):
        super().__init__()
        self.spec, self.weights, self.pool = spec, weights, check_pool(spec, pool)
        model = spec.build()
        if weights.path is not None:
            model.load_state_dict(spec.convert_state_dict(weights.load()))
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

    def identity(self) -> dict:
        """What makes these features what they are: stored in every cache and bundle (as JSON)."""
        return _json_roundtrip(dict(backbone=self.spec.name, weights_sha256=self.weights.sha256,
                    weights_path=str(self.weights.path or ""), pool=self.pool,
                    feature_dim=self.feature_dim, input_size=self.preprocessing.crop_size,
                    preprocessing=self.preprocessing.to_dict()))

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


def save_weights(extractor: FeatureExtractor, path: str | os.PathLike) -> weights_mod.Weights:
    """Write the extractor's (fine-tuned) base as a whole state dict of its backbone, one that
    ``load_backbone(name, weights=path)`` reads like any downloaded weights."""
    path = Path(path)
    model = extractor.spec.build()
    # The state dict shares storage with the parameters, so it sees the values loaded through the
    # tap; and it still holds what the tap drops (the classifier), so it loads strictly.
    whole = model.state_dict()
    extractor.spec.tap(model).load_state_dict(extractor.base.state_dict())
    tmp = path.with_name(path.name + ".tmp")
    torch.save(whole, tmp)
    os.replace(tmp, path)
    return weights_mod.Weights(path, weights_mod.sha256_file(path))


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                  pool: str = "avg") -> FeatureExtractor:
    """Build a frozen feature extractor; ``weights``: None (default weights), "none", or a path."""
    spec = get_backbone(name)
    check_pool(spec, pool)
    resolved = weights_mod.resolve(spec, weights)
    if resolved.path is None:
        # Random init is seeded so that a cache made with it can be recognised as up to date.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return FeatureExtractor(spec, resolved, pool)
    return FeatureExtractor(spec, resolved, pool)
