"""A state (nested dicts and lists of tensors, arrays, numbers and strings) in one safetensors
file, never a pickle: reading a file from anyone runs no code of theirs.

The tensors are the file's tensors; the rest of the state is JSON in the file's metadata, with
``{"tensor": NAME}`` where a tensor was. A dict whose keys are not all strings (an optimizer's
state, keyed by parameter number) is kept as ``{"int_keys": [[key, value], ...]}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors

from .files import durable_write
from .schema import load_json

if TYPE_CHECKING:
    import torch

_METADATA = "featx.state"


def _is_torch(value) -> bool:
    # Torch is imported by whoever made a tensor of it: a state of arrays alone never needs it.
    return "torch" in sys.modules and isinstance(value, sys.modules["torch"].Tensor)


def save_state(path: str | os.PathLike, state) -> None:
    """Write ``state`` to ``path`` crash-safe (``files.durable_write``)."""
    tensors: dict[str, np.ndarray | torch.Tensor] = {}

    def skeleton(value):
        if isinstance(value, np.generic):  # a numpy number is kept as the number it is
            value = value.item()
        if isinstance(value, np.ndarray) or _is_torch(value):
            name = str(len(tensors))
            # A copy of its own: safetensors refuses tensors that share memory, or are strided
            # (a channels-last model's weights).
            tensors[name] = np.array(value, order="C") if isinstance(value, np.ndarray) else \
                value.detach().cpu().clone(memory_format=sys.modules["torch"].contiguous_format)
            return {"tensor": name}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: skeleton(v) for k, v in value.items()}
            return {"int_keys": [[int(k), skeleton(v)] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return [skeleton(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"a state file holds tensors, numbers, strings, lists and dicts, not "
                        f"{type(value).__name__}")

    write_tensors(path, tensors, {_METADATA: json.dumps(skeleton(state))})


def write_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray | torch.Tensor],
                  metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written crash-safe (``files.durable_write``); a full disk raises
    ``OSError``, where safetensors' own writer would raise its own error type. Arrays alone are
    written by safetensors' NumPy writer; with any torch tensor, all go through torch's (the
    same file format either way)."""
    if any(_is_torch(t) for t in tensors.values()):
        import safetensors.torch
        import torch

        data = safetensors.torch.save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                       for k, v in tensors.items()}, metadata)
    else:
        import safetensors.numpy

        data = safetensors.numpy.save(tensors, metadata)
    path = Path(path)
    with durable_write(path, path.with_name(f"{path.name}.{os.getpid()}.tmp")) as tmp:
        tmp.write_bytes(data)


def load_state(path: str | os.PathLike, numpy: bool = False):
    """The state ``save_state`` wrote; tensors as numpy arrays when ``numpy``.

    Raises ``ValueError`` for a file that is not one (safetensors' own errors included, so that
    a caller names the file in one line).
    """
    try:
        with safetensors.safe_open(path, framework="np" if numpy else "pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
            text = (f.metadata() or {}).get(_METADATA)
    except safetensors.SafetensorError as e:
        raise ValueError(f"not a safetensors file ({e})") from e
    if text is None:
        raise ValueError("a safetensors file, but not one featx wrote (no featx.state metadata)")

    def rebuild(value):
        if isinstance(value, dict):
            if set(value) == {"tensor"}:
                return tensors[value["tensor"]]
            if set(value) == {"int_keys"}:
                return {int(k): rebuild(v) for k, v in value["int_keys"]}
            return {k: rebuild(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rebuild(v) for v in value]
        return value

    try:
        return rebuild(load_json(text, "featx.state"))  # nesting bounded: rebuild recurses
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"its featx.state metadata is damaged ({type(e).__name__}: {e})") from e
