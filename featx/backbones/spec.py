"""What featx knows of a backbone before building it: ``BackboneSpec``, and the poolings it allows.

Torch-free at import, so that the registry can be listed (and the command line start) without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    from torch import nn

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
    # The downloaded file's name in the torch hub cache; None: the URL's last part.
    weights_name: str | None = None
    weights_file: Path | None = None
    convert_state_dict: Callable[[dict], dict] = field(default=lambda sd: sd)
    # Its feature maps inside the base are N×H×W×C (Swin), for ``--layer``'s pooling.
    channels_last: bool = False
    # The base's units for ``--unfreeze`` (``blocks``); None: its children.
    blocks: Callable[[nn.Module], list[nn.Module]] | None = None
    # How many of the base's top ``blocks`` fine-tuning unfreezes by default; None: the top third.
    finetune_top: int | None = None


def pooled_dim(shape: tuple[int, ...], pool: str, channels_last: bool = False) -> int:
    """Features of one image's output of ``shape`` (no batch axis) pooled by ``pool``: a vector
    as it is, a feature map (C, H, W, or H, W, C when ``channels_last``) or a transformer's
    tokens (T, C) to C, or all flattened."""
    if pool == "flatten" or len(shape) == 1:
        return math.prod(shape)
    return shape[-1] if len(shape) == 2 or channels_last else shape[0]


def check_pool(spec: BackboneSpec, pool: str, inside: bool = False) -> str:
    """``pool`` if it is one the backbone's output allows; ``inside``: of a layer inside the base
    (``--layer``), where any is, as the layer's shape decides what it does."""
    if pool not in POOLS:
        raise ConfigError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    if pool != "avg" and not spec.spatial and not inside:
        raise ConfigError(f"{spec.name} has no convolutional feature map, so `pool` {pool} is not "
                          f"possible: use `pool` avg (its own pooled representation)")
    return pool
