"""The registry: names, preprocessing taken from the weights, feature dims, taps and pooling."""

from __future__ import annotations

import pytest
import torch
import torchvision

import featx
from featx.backbones import timm_zoo
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.registry import get_backbone
from featx.backbones.spec import BackboneSpec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_every_torchvision_classifier_is_registered_beside_the_lite_family():
    names = featx.list_backbones()
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert names[0] == featx.DEFAULT_BACKBONE
    zoo = torchvision.models.list_models(module=torchvision.models)
    assert set(names[3:3 + len(zoo)]) == set(zoo)
    assert names[3 + len(zoo):] == list(timm_zoo.MODELS)  # the test extra has timm
    assert {"vgg16", "resnet50", "mobilenet_v2", "inception_v3", "vit_b_16", "regnet_y_400mf"} <= set(names)


# Values as torchvision's documentation gives them for each model's DEFAULT weights.
@pytest.mark.parametrize("name, resize, crop, interpolation, mean, std", [
    ("vgg16", 256, 224, "bilinear", *IMAGENET),
    ("resnet50", 232, 224, "bilinear", *IMAGENET),
    ("inception_v3", 342, 299, "bilinear", *IMAGENET),
    ("efficientnet_b3", 320, 300, "bicubic", *IMAGENET),
    ("convnext_tiny", 236, 224, "bilinear", *IMAGENET),
    ("efficientnet_lite0", 256, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_preprocessing_is_the_weights_own(name, resize, crop, interpolation, mean, std):
    p = get_backbone(name).preprocessing
    assert (p.resize_size, p.crop_size, p.interpolation) == (resize, crop, interpolation)
    assert p.mean == pytest.approx(mean) and p.std == pytest.approx(std)


@pytest.mark.parametrize("name, pool, dim", [
    ("efficientnet_lite0", "avg", 1280), ("vgg16", "avg", 512), ("vgg16", "flatten", 25088),
    ("resnet50", "max", 2048), ("mobilenet_v3_small", "avg", 576), ("densenet121", "avg", 1024),
    ("inception_v3", "avg", 2048), ("vit_b_16", "avg", 768), ("regnet_y_400mf", "avg", 440),
    ("swin_t", "avg", 768), ("googlenet", "avg", 1024), ("shufflenet_v2_x1_0", "avg", 1024),
])
def test_feature_dim_is_known_before_any_image(name, pool, dim):
    assert featx.feature_spec(name, pool).feature_dim == dim


def test_every_backbone_has_a_feature_dim():
    # A dry run of each tap on the meta device: catches a family whose tap is wrong.
    dims = {name: featx.feature_spec(name).feature_dim for name in featx.list_backbones()}
    assert all(d > 0 for d in dims.values()), dims


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18", "squeezenet1_0", "googlenet"])
def test_random_init_extractor_gives_its_declared_dim(name):
    model = featx.load_backbone(name, weights="none")
    size = model.preprocessing.crop_size
    with torch.inference_mode():
        out = model(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
    assert out.shape == (2, model.feature_dim) and torch.isfinite(out).all()
    assert model.identity().weights_sha256 == "random-init"
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.parametrize("pool, dim", [("avg", 512), ("max", 512), ("flatten", 512 * 7 * 7)])
def test_pooling_of_a_feature_map(pool, dim):
    model = featx.load_backbone("resnet18", weights="none", pool=pool)
    with torch.inference_mode():
        out = model(torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8))
    assert out.shape == (1, dim) == (1, model.feature_dim)


def test_pool_of_a_model_without_feature_map_is_refused():
    with pytest.raises(featx.ConfigError, match="vit_b_16 has no convolutional feature map, so "
                                                "`pool` max is not possible"):
        featx.load_backbone("vit_b_16", weights="none", pool="max")


def test_unknown_pool_is_refused():
    with pytest.raises(featx.ConfigError, match="unknown pooling 'mean': choose one of avg, max, flatten"):
        featx.feature_spec("resnet18", "mean")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(featx.UnknownBackboneError) as e:
        get_backbone("resnet5")
    assert str(e.value).startswith("unknown backbone 'resnet5': did you mean resnet50")
    assert "`featx backbones` lists the" in str(e.value)


def test_duplicate_registration_is_refused():
    spec = get_backbone("resnet18")
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        featx.register(spec)


def test_a_registered_backbone_is_usable_by_name(register):
    tiny = BackboneSpec(
        name="tiny_test_net", source="tests",
        preprocessing=Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.25,) * 3),
        build=lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()),
        tap=lambda m: m, spatial=True, weights_url="https://example.invalid/tiny_test_net-0123abcd.pth")
    register(tiny)
    assert get_backbone("tiny_test_net") is tiny and "tiny_test_net" in featx.list_backbones()
    model = featx.load_backbone("tiny_test_net", weights="none", pool="flatten")
    assert model.feature_dim == 8 * 30 * 30
