"""A backbone's output shape, from a dry run on the meta device (no memory, no weights, no image),
remembered on disk because listing every backbone would otherwise cost half a minute."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch
import torchvision

from ..util.files import durable_write
from ..version import __version__
from .layers import catch, caught, cut
from .spec import BackboneSpec, pooled_dim


def _shapes_file() -> Path:
    name = f"output_shapes-featx{__version__}-torchvision{torchvision.__version__}.json"
    return Path(torch.hub.get_dir()).parent / "featx" / name


def meta_base(spec: BackboneSpec) -> torch.nn.Module:
    """The backbone's tapped base on the meta device: its structure, without memory or weights."""
    try:
        with torch.device("meta"):
            return spec.tap(spec.build()).eval()
    except NotImplementedError:  # RegNet's constructor computes its widths with real tensors
        return spec.tap(spec.build()).to("meta").eval()


def meta_input(spec: BackboneSpec) -> torch.Tensor:
    size = spec.preprocessing.crop_size
    return torch.empty(1, 3, size, size, device="meta")


@functools.cache
def output_shape(spec: BackboneSpec) -> tuple[int, ...]:
    """Shape of one image's output of the tap."""
    path = _shapes_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    key = f"{spec.name}@{spec.preprocessing.crop_size}"
    if key not in known:
        known[key] = list(meta_base(spec)(meta_input(spec)).shape[1:])
        with contextlib.suppress(OSError):  # a read-only home only costs the dry run next time
            path.parent.mkdir(parents=True, exist_ok=True)
            with durable_write(path, path.with_suffix(f".{os.getpid()}.tmp")) as tmp:
                tmp.write_text(json.dumps(known, sort_keys=True))
    return tuple(known[key])


@functools.cache
def layer_shapes(spec: BackboneSpec, layers: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Shape of one image's output of each of ``layers`` inside the base."""
    base = cut(meta_base(spec), layers, spec.name)
    catch(base, layers)
    base(meta_input(spec))
    return [tuple(out.shape[1:]) for out in caught(base, layers)]


def feature_dim(spec: BackboneSpec, pool: str = "avg", layers: tuple[str, ...] = ()) -> int:
    """Features per image of ``spec`` pooled by ``pool``: of its output, or of ``layers`` inside
    its base, one after the other."""
    if layers:
        return sum(pooled_dim(s, pool, spec.channels_last) for s in layer_shapes(spec, layers))
    return pooled_dim(output_shape(spec), pool)
