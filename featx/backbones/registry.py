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
_TIMM_LOADED = False


def register(spec: BackboneSpec) -> None:
    """Add a backbone; a name already taken is refused rather than silently replaced."""
    _add(_registry(), spec)


def unregister(name: str) -> BackboneSpec:
    """Remove a backbone ``register`` added (a plug-in's, a test's), and return its spec."""
    registry = _registry(with_timm=True)
    if name not in registry:
        raise UnknownBackboneError(f"no backbone named {name!r} is registered")
    return registry.pop(name)


def _add(registry: dict[str, BackboneSpec], spec: BackboneSpec) -> None:
    if spec.name in registry:
        raise ValueError(f"a backbone named {spec.name!r} is already registered")
    registry[spec.name] = spec


def _registry(with_timm: bool = False) -> dict[str, BackboneSpec]:
    # Filled on first use: importing torchvision's model zoo costs seconds that `featx --help`
    # should not pay; timm's, only once one of its bases is asked for or all are listed.
    global _BUILTIN_LOADED, _TIMM_LOADED
    if not _BUILTIN_LOADED:
        from . import efficientnet_lite, torchvision_zoo

        for spec in [*efficientnet_lite.specs(), *torchvision_zoo.specs()]:
            _add(_REGISTRY, spec)
        _BUILTIN_LOADED = True
    if with_timm and not _TIMM_LOADED:
        from . import timm_zoo

        _TIMM_LOADED = True  # once, even if it fails: a failure is said, not repeated
        for spec in timm_zoo.specs():
            if spec.name not in _REGISTRY:  # registered by hand before they were all loaded
                _add(_REGISTRY, spec)
    return _REGISTRY


def list_backbones() -> list[str]:
    return list(_registry(with_timm=True))


def get_backbone(name: str) -> BackboneSpec:
    from .timm_zoo import INSTALL, MODELS

    registry = _registry(with_timm=name in MODELS)
    if name not in registry:
        registry = _registry(with_timm=True)  # the closest names may be timm's
    if name not in registry:
        if name in MODELS:
            raise UnknownBackboneError(f"{name} comes from timm, which is not installed: {INSTALL}")
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}: {hint}`featx backbones` lists the {len(registry)} available")
    return registry[name]
