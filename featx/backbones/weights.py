"""Where a backbone's weights come from: a local file, the torch hub cache, or a download."""

from __future__ import annotations

import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from ..errors import WeightsUnavailableError, first_line
from ..util.files import sha256_file
from .identity import RANDOM_INIT
from .spec import BackboneSpec


@dataclass(frozen=True)
class Weights:
    """A resolved weights file and its identity (sha256); ``path`` is None for random init."""

    path: Path | None
    sha256: str

    def load(self) -> dict[str, torch.Tensor]:
        """The state dict: from safetensors (featx's own files), or from torch's format, the one
        torchvision publishes, with ``weights_only`` (tensors and containers only: no code)."""
        try:
            if self.path.suffix == ".safetensors":
                return safetensors.torch.load_file(self.path)
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, EOFError, RuntimeError...: the file is at fault
            raise WeightsUnavailableError(
                f"cannot read weights from {self.path} ({first_line(e)}): pass "
                f"a state-dict file (.safetensors, .pt or .pth) or leave out `weights`") from e


def hub_path(spec: BackboneSpec) -> Path:
    """Where the spec's download is kept: torchvision's own place for it (honours TORCH_HOME)."""
    name = spec.weights_name or os.path.basename(spec.weights_url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve(spec: BackboneSpec, weights: str | os.PathLike | None = None) -> Weights:
    """``weights``: a state-dict path, "none" for random init, or None for the spec's default.

    The default is the packaged file, else the torch hub cache, else a download into that cache.
    """
    if weights is not None and str(weights) == "none":
        return Weights(None, RANDOM_INIT)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file {path} does not exist: pass the path of a saved state dict for "
                f"{spec.name}, or leave out `weights` to use its default weights")
    elif spec.weights_file is not None:
        path = spec.weights_file
    else:
        path = hub_path(spec)
        if not path.is_file():
            _download(spec, path)
    return Weights(path, sha256_file(path))


def is_on_disk(spec: BackboneSpec) -> bool:
    path = spec.weights_file or hub_path(spec)
    return path.is_file()


def _download(spec: BackboneSpec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(spec.weights_url, str(path),
                                       hash_prefix=match.group(1) if match else None)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = re.sub(r"\s+", " ", str(getattr(e, "reason", e))).strip()
        raise WeightsUnavailableError(
            f"cannot download the {spec.name} weights ({reason}): download {spec.weights_url} "
            f"and put it at {path}, or pass `weights` PATH") from e
