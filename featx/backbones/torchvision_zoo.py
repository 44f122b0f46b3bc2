"""Every torchvision classification model as a featx backbone, with its weights' own preprocessing.

For each family this file says where the convolutional base ends (the feature tap). Families
whose body has no plain feature map (vision transformers, GoogLeNet, Inception v3) are tapped at
their own pooled representation instead, with the classifier replaced by an identity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from torch import nn
from torchvision import models

from . import blocks
from .preprocessing import Preprocessing
from .spec import BackboneSpec


def _features(m: nn.Module) -> nn.Module:
    return m.features


def _densenet(m: nn.Module) -> nn.Module:
    # torchvision's DenseNet applies a ReLU after `features` before pooling.
    return nn.Sequential(m.features, nn.ReLU())


def _resnet(m: nn.Module) -> nn.Module:
    return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)


def _regnet(m: nn.Module) -> nn.Module:
    return nn.Sequential(m.stem, *m.trunk_output)


def _mnasnet(m: nn.Module) -> nn.Module:
    return m.layers


def _shufflenet(m: nn.Module) -> nn.Module:
    return nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5)


def _replace_classifier(attr: str, index: int | None = None) -> Callable[[nn.Module], nn.Module]:
    def tap(m: nn.Module) -> nn.Module:
        if index is None:
            setattr(m, attr, nn.Identity())
        else:
            getattr(m, attr)[index] = nn.Identity()
        return m
    return tap


def _inception(m: nn.Module) -> nn.Module:
    # The checkpoints hold the auxiliary classifiers; they are loaded, then dropped.
    m.aux_logits = False
    for aux in ("AuxLogits", "aux1", "aux2"):
        if hasattr(m, aux):
            setattr(m, aux, None)
    return _replace_classifier("fc")(m)


# name prefix -> (tap, spatial). Longest prefix wins, so "resnext" is not taken for "resnet".
_FAMILIES: dict[str, tuple[Callable[[nn.Module], nn.Module], bool]] = {
    "alexnet": (_features, True), "vgg": (_features, True), "squeezenet": (_features, True),
    "mobilenet": (_features, True), "efficientnet": (_features, True), "convnext": (_features, True),
    "densenet": (_densenet, True), "resnet": (_resnet, True), "resnext": (_resnet, True),
    "wide_resnet": (_resnet, True), "regnet": (_regnet, True), "mnasnet": (_mnasnet, True),
    "shufflenet": (_shufflenet, True),
    "googlenet": (_inception, False), "inception": (_inception, False),
    "vit": (_replace_classifier("heads"), False), "swin": (_replace_classifier("head"), False),
    "maxvit": (_replace_classifier("classifier", -1), False),
}


# The units of ``unfreeze`` where they are not the base's children (``blocks.children``).
_BLOCKS = {"vit": blocks.vit, "swin": blocks.stages, "convnext": blocks.stages,
           "maxvit": blocks.maxvit, "vgg": blocks.conv_bn}

# Fine-tuning defaults that differ from the top third of the base's blocks: VGG's last
# convolutional block (its three conv layers), as in Chollet's VGG16 fine-tuning recipe;
# Inception v3's top two inception blocks, as in the Keras applications' own recipe; the
# last stage of ConvNeXt, Swin and MaxViT, which already holds more than half of their weights.
_FINETUNE_TOP = {"vgg": 3, "inception": 2, "convnext": 1, "swin": 1, "maxvit": 1}


def _family(name: str) -> str:
    return max((p for p in _FAMILIES if name.startswith(p)), key=len)


def _arch_kwargs(name: str, weights: models.WeightsEnum) -> dict:
    """The constructor arguments torchvision's builder sets itself when it loads these weights."""
    family = _family(name)
    if family in ("googlenet", "inception"):
        return dict(transform_input=True, aux_logits=True, init_weights=False)
    if family == "vit":
        return dict(image_size=weights.meta["min_size"][0])
    return {}


def _build(name: str) -> nn.Module:
    weights = models.get_model_weights(name).DEFAULT
    return models.get_model(name, weights=None, **_arch_kwargs(name, weights))


def preprocessing_of(weights: models.WeightsEnum) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(resize_size=t.resize_size[0], crop_size=t.crop_size[0],
                         interpolation=t.interpolation.value, mean=t.mean, std=t.std)


def specs() -> Iterator[BackboneSpec]:
    for name in models.list_models(module=models):
        weights = models.get_model_weights(name).DEFAULT
        tap, spatial = _FAMILIES[_family(name)]
        yield BackboneSpec(
            name=name, source=f"torchvision {weights}", preprocessing=preprocessing_of(weights),
            build=functools.partial(_build, name), tap=tap, spatial=spatial,
            weights_url=weights.url, blocks=_BLOCKS.get(_family(name)),
            channels_last=_family(name) == "swin",
            finetune_top=_FINETUNE_TOP.get(_family(name)))
