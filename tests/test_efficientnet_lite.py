"""The offline Lite family (Lite0 the default) with its real ImageNet weights, on real photos."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights

import featx
from featx.backbones import efficientnet_lite
from featx.backbones.weights import resolve

# The ImageNet class names, as torchvision's weights carry them.
IMAGENET_CATEGORIES = ResNet50_Weights.DEFAULT.meta["categories"]

skimage_data = pytest.importorskip("skimage.data")


VARIANTS = list(efficientnet_lite.VARIANTS)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def package_state_dict(variant) -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite.weights_file(variant), map_location="cpu", weights_only=True)


def test_every_key_of_the_package_maps_onto_the_architecture(variant, package_state_dict):
    converted = efficientnet_lite.convert_state_dict(package_state_dict)
    assert len(converted) == len(package_state_dict)  # nothing left behind
    width, depth, _ = efficientnet_lite.VARIANTS[variant]
    model = efficientnet_lite.EfficientNetLite(width, depth)
    model.load_state_dict(converted, strict=True)  # the scaled stages match the package's shapes
    for name, tensor in model.state_dict().items():
        assert tensor.shape == converted[name].shape, name


def test_a_featx_state_dict_loads_as_it_is(package_state_dict):
    converted = efficientnet_lite.convert_state_dict(package_state_dict)
    assert efficientnet_lite.load_state_dict(converted) is converted


def test_weights_work_offline_and_are_identified_by_hash(variant):
    spec = featx.get_backbone(f"efficientnet_lite{variant}")
    w = resolve(spec)
    assert w.path == efficientnet_lite.weights_file(variant) and len(w.sha256) == 64
    size = efficientnet_lite.VARIANTS[variant][2]  # the size each was trained at, 32 px more resized
    assert (spec.preprocessing.crop_size, spec.preprocessing.resize_size) == (size, size + 32)


@pytest.mark.parametrize("photo, expected", [
    ("chelsea", {"Egyptian cat", "tiger cat", "tabby"}),
    ("coffee", {"espresso"}),
])
def test_real_photos_are_classified_as_imagenet_says(variant, package_state_dict, photo, expected):
    # Features through featx's own path (reader crop, on-device normalisation, tap, pooling),
    # then the package's ImageNet layer: wrong preprocessing or a mis-mapped key shows here.
    model = featx.load_backbone(f"efficientnet_lite{variant}")
    image = Image.fromarray(getattr(skimage_data, photo)())
    x = model.preprocessing.crop(image).unsqueeze(0)
    with torch.inference_mode():
        logits = model(x) @ package_state_dict["_fc.weight"].T + package_state_dict["_fc.bias"]
    top3 = {IMAGENET_CATEGORIES[i] for i in logits[0].topk(3).indices.tolist()}
    assert IMAGENET_CATEGORIES[int(logits.argmax())] in expected
    assert expected <= top3


def test_same_padding_puts_the_odd_pixel_bottom_right():
    # 3×3 windows, stride 2, on 4×4: TensorFlow's windows start at rows 0 and 2, torch's
    # symmetric padding at -1 and 1, so pixel (1, 1) is in one window with one and in all four
    # with the other.
    conv = efficientnet_lite.SameConv2d(1, 1, kernel=3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 4, 4)
    x[..., 1, 1] = 1
    with torch.no_grad():
        y = conv(x)
    assert y[0, 0].tolist() == [[1, 0], [0, 0]]
