"""Features from inside a base (``--layer NAME``): each named module's output, caught by a
forward hook as the base runs. A base that is a chain (``nn.Sequential``) is cut after the link
that holds the last of them, so nothing past it runs; any other runs whole."""

from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConfigError


def layer_names(base: nn.Module) -> list[str]:
    """The base's modules in definition order, by the names ``--layer`` takes."""
    return [name for name, _ in base.named_modules() if name]


def cut(base: nn.Module, layers: tuple[str, ...], backbone: str) -> nn.Module:
    """``base`` up to ``layers``, refusing a name it does not have: the base's own modules (not
    copies), under the same names, so that its state dict keys are the base's."""
    known = layer_names(base)
    if len(set(layers)) < len(layers):
        raise ConfigError(f"`layers` names a layer twice ({', '.join(layers)}): name each once")
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, known, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"{backbone} has no layer {layer!r}: {hint}`featx backbones "
                              f"{backbone} --layers` lists them")
    if type(base) is not nn.Sequential:
        return base
    links = list(base.named_children())
    last = max(i for i, (name, _) in enumerate(links) for layer in layers
               if layer == name or layer.startswith(f"{name}."))
    return nn.Sequential(OrderedDict(links[:last + 1]))


OUTPUT = "featx_output"


def _keep(module: nn.Module, _args, out: torch.Tensor) -> None:
    # On the module itself, not in a dict the hook shares with the reader: exporting to ONNX
    # (torch.export) writes a traced model's containers back as new objects, and the module is the
    # one thing both still hold.
    setattr(module, OUTPUT, out)


def catch(base: nn.Module, layers: tuple[str, ...]) -> None:
    """Make each forward pass of ``base`` leave each of ``layers``' output on that module, as
    ``caught`` reads it."""
    for layer in layers:
        base.get_submodule(layer).register_forward_hook(_keep)


def caught(base: nn.Module, layers: tuple[str, ...]) -> list[torch.Tensor]:
    """Each of ``layers``' output in the last forward pass of ``base``; one that gave no single
    tensor (an attention block's tuple) or did not run is refused, naming it."""
    found = [getattr(base.get_submodule(layer), OUTPUT, None) for layer in layers]
    for layer, out in zip(layers, found, strict=True):
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {layer!r} gives no single tensor of features: pick one that "
                              f"`featx backbones NAME --layers` shows with a shape")
    return found
