"""The units ``--unfreeze top:N`` counts: a base's stages in forward order, each holding its
parameters, together holding them all once.

Most bases are a chain of such stages, found by ``children``. Where a family's stages are not its
children (a vision transformer's encoder layers, Swin's and ConvNeXt's stages with the
downsampling before each, VGG's convolutions with their BatchNorm), its entry in the zoo says
them with ``Group``.
"""

from __future__ import annotations

from torch import nn


class Group(nn.Module):
    """Parts of a base taken as one unit: the same modules and parameters (not copies), so that
    ``requires_grad_``, ``train`` and ``eval`` on it reach them; it is not part of the base."""

    def __init__(self, *parts: nn.Module, **parameters: nn.Parameter):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        for name, p in parameters.items():
            self.register_parameter(name, p)


def children(base: nn.Module) -> list[nn.Module]:
    """The base's children that hold parameters, looked for one level further down while there
    is only one."""
    found = [base]
    while len(found) == 1:
        inner = [c for c in found[0].children() if next(c.parameters(), None) is not None]
        if not inner:
            break
        found = inner
    return found


def vit(base: nn.Module) -> list[nn.Module]:
    """torchvision's VisionTransformer: the patch embedding with the class token and position
    embedding, then each encoder layer, the last with the final LayerNorm."""
    layers = list(base.encoder.layers)
    return [Group(base.conv_proj, class_token=base.class_token, pos_embedding=base.encoder.pos_embedding),
            *layers[:-1], Group(layers[-1], base.encoder.ln)]


def stages(base: nn.Module) -> list[nn.Module]:
    """ConvNeXt's and Swin's ``features`` (stem, then stages each after its downsampling): one
    unit per stage with what comes before it; Swin's final norm goes with its last stage."""
    parts = list(base.features if hasattr(base, "features") else base)
    found = [Group(*parts[i:i + 2]) for i in range(0, len(parts), 2)]
    if isinstance(getattr(base, "norm", None), nn.Module):
        found[-1] = Group(*parts[-2:], base.norm)
    return found


def maxvit(base: nn.Module) -> list[nn.Module]:
    """MaxViT: the stem, each of its blocks, the last with the classifier's norm and projection."""
    return [base.stem, *base.blocks[:-1], Group(base.blocks[-1], base.classifier)]


def conv_bn(base: nn.Module) -> list[nn.Module]:
    """VGG's layers with parameters, each BatchNorm going with the convolution before it, so that
    top:3 is the last conv block with or without BatchNorm."""
    found: list[nn.Module] = []
    for layer in children(base):
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and found:
            found[-1] = Group(found[-1], layer)
        else:
            found.append(layer)
    return found
