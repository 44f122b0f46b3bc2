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

if TYPE_CHECKING:
    from torch import nn

    from .preprocessing import Preprocessing

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
        from .shapes import output_shape  # a dry run of the network: torch, paid only here

        check_pool(self, pool)
        shape = output_shape(self)
        return math.prod(shape) if pool == "flatten" else shape[0]


def check_pool(spec: BackboneSpec, pool: str) -> str:
    if pool not in POOLS:
        raise ConfigError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    if pool != "avg" and not spec.spatial:
        raise ConfigError(f"{spec.name} has no convolutional feature map, so --pool {pool} is not "
                          f"possible: use --pool avg (its own pooled representation)")
    return pool
