"""Bases from timm, an optional extra (``pip install 'featx[timm]'``): the models of the Keras
transfer-learning recipes and the ones people now pick for linear probes.

Each is timm's model with its classifier removed, so the features are its own pooled
representation (a CNN's global pool, a ViT's class token or average, CLIP's image embedding
before the projection). Its preprocessing is timm's ``pretrained_cfg`` for those weights, and its
weights come from where timm gets them, the Hugging Face hub, in timm's own key layout. Any other
timm model is one ``featx.register(featx.timm_backbone(NAME))`` away.
"""

from __future__ import annotations

import functools
import math

from torch import nn

from ..errors import ConfigError, UnknownBackboneError
from .blocks import Group
from .preprocessing import Preprocessing
from .spec import BackboneSpec

# timm's name with its weights tag -> what it is.
MODELS = {
    "xception65.tf_in1k": "Xception-65, ImageNet (the Keras recipes' Xception, TensorFlow weights)",
    "inception_v3.tf_in1k": "Inception v3, ImageNet (Keras' weights)",
    "inception_resnet_v2.tf_in1k": "Inception-ResNet-v2, ImageNet (TensorFlow weights)",
    "nasnetalarge.tf_in1k": "NASNet-A Large, ImageNet (TensorFlow weights)",
    "convnext_base.fb_in22k_ft_in1k": "ConvNeXt-B, ImageNet-22k then 1k",
    "vit_small_patch14_dinov2.lvd142m": "DINOv2 ViT-S/14, self-supervised on LVD-142M",
    "vit_base_patch14_dinov2.lvd142m": "DINOv2 ViT-B/14, self-supervised on LVD-142M",
    "vit_base_patch16_clip_224.openai": "CLIP ViT-B/16 image tower (OpenAI)",
    "eva02_base_patch14_224.mim_in22k": "EVA-02 ViT-B/14, masked image modelling on ImageNet-22k",
}
INSTALL = "pip install 'featx[timm]'"


def available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def preprocessing_of(cfg) -> Preprocessing:
    """timm's eval transform for ``cfg`` (a ``PretrainedCfg``): the shorter side resized to
    size / crop_pct, then a centre crop of the input size."""
    size = cfg.input_size[-1]
    return Preprocessing(resize_size=math.floor(size / cfg.crop_pct), crop_size=size,
                         interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)


def _without_classifier(model: nn.Module) -> nn.Module:
    model.reset_classifier(0)
    return model


def _blocks(base: nn.Module) -> list[nn.Module]:
    """The units timm itself groups the model's weights into for layer-wise rates (its
    ``group_matcher``): the stem, each block or stage, the final norm with the last one."""
    from timm.models import group_parameters

    owners = dict(base.named_modules())
    found = []
    for names in group_parameters(base, base.group_matcher(coarse=True)).values():
        modules, loose = {}, {}
        for name in names:
            owner, _, attr = name.rpartition(".")
            if owner:
                modules.setdefault(owner, owners[owner])
            else:  # a parameter of the model itself: a class token, a position embedding
                loose[attr] = getattr(base, attr)
        found.append(Group(*modules.values(), **loose))
    return found


def timm_backbone(name: str, about: str = "") -> BackboneSpec:
    """The backbone for timm model ``name`` (with its weights tag, e.g. ``convnext_tiny.fb_in1k``)."""
    if not available():
        raise ConfigError(f"{name} comes from timm, which is not installed: {INSTALL}")
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # a model timm has, with weights it does not
        raise UnknownBackboneError(f"{name}: {e} `timm.list_pretrained()` lists them") from e
    if cfg is None:
        raise UnknownBackboneError(f"timm has no model {name!r} with weights: "
                                   f"`timm.list_pretrained()` lists them")
    hub = cfg.hf_hub_id or f"timm/{name}"
    return BackboneSpec(
        name=name, source=f"timm {name}{f': {about}' if about else ''}; weights huggingface.co/{hub}",
        preprocessing=preprocessing_of(cfg),
        build=functools.partial(timm.create_model, name, pretrained=False),
        tap=_without_classifier, spatial=False,
        weights_url=f"https://huggingface.co/{hub}/resolve/main/model.safetensors",
        weights_name=f"timm-{name}.safetensors", blocks=_blocks)


def specs() -> list[BackboneSpec]:
    return [timm_backbone(name, about) for name, about in MODELS.items()] if available() else []
