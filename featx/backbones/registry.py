"""The backbone registry: one name for each backbone, the built-in ones loaded on first use.

A name already taken is refused rather than silently replaced; an unknown name is answered with
the closest known ones.
"""

from __future__ import annotations

import difflib

from ..errors import UnknownBackboneError
from .spec import BackboneSpec

DEFAULT_BACKBONE = "efficientnet_lite0"
TOP_LABELS = 5  # the ImageNet labels `featx classify` gives per image

_REGISTRY: dict[str, BackboneSpec] = {}
_BUILTIN_LOADED = False


def register(spec: BackboneSpec) -> None:
    """Add a backbone; a name already taken is refused rather than silently replaced."""
    _add(_registry(), spec)


def unregister(name: str) -> BackboneSpec:
    """Remove a backbone ``register`` added (a plug-in's, a test's), and return its spec."""
    registry = _registry()
    if name not in registry:
        raise UnknownBackboneError(f"no backbone named {name!r} is registered")
    return registry.pop(name)


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

        for spec in [*efficientnet_lite.specs(), *torchvision_zoo.specs()]:
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
