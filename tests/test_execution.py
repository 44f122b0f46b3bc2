"""The faster ways to run the frozen base give eager's features, within the stated tolerance."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import featx
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.spec import BackboneSpec
from featx.extraction.execution.compiled import FixedBatch
from featx.extraction.execution.fold import TOLERANCE, fold_batchnorm
from featx.extraction.execution.prepare import prepare

from conftest import COLOURS, write_folder, write_image

CPU = torch.device("cpu")


def _images(n: int = 4, size: int = 224) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _relative_error(want: torch.Tensor, got: torch.Tensor) -> float:
    return ((want - got).abs().max() / want.abs().max()).item()


def _randomise_batchnorm(model: nn.Module) -> None:
    """Random-init BatchNorm is the identity, which folding leaves unchanged whether right or
    wrong; give every one real statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def test_lite0_with_its_real_weights_folds_every_batchnorm_and_keeps_its_features():
    model = featx.load_backbone()
    x = _images()
    folded, n, error = fold_batchnorm(model, x)
    assert (n, _count_bn(folded), _count_bn(model)) == (49, 0, 49)  # the original is untouched
    with torch.inference_mode():
        assert _relative_error(model(x), folded(x)) < TOLERANCE
    assert error < TOLERANCE


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "vgg11_bn"])
def test_torchvision_families_fold_and_keep_their_features(name):
    model = featx.load_backbone(name, weights="none")
    _randomise_batchnorm(model)
    x = _images(2)
    with torch.inference_mode():
        want = model(x)
    runner = prepare(model, "fold", CPU, batch_size=2)
    assert runner.execution == "fold" and _count_bn(runner.model) == 0 < _count_bn(model)
    with torch.inference_mode():
        assert _relative_error(want, runner(x)) < TOLERANCE


class _SharedOutput(nn.Module):
    """A convolution whose output feeds a BatchNorm and, unnormalised, a residual sum: folding
    the BatchNorm into the convolution would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def _tiny_backbone(register, name: str, build) -> featx.FeatureExtractor:
    """A backbone of the test's own on 16×16 inputs, registered for this test only, with real
    BatchNorm statistics."""
    register(BackboneSpec(
        name=name, source="tests", preprocessing=Preprocessing(20, 16, "bilinear", (0.5,) * 3, (0.25,) * 3),
        build=build, tap=lambda m: m, spatial=True))
    model = featx.load_backbone(name, weights="none")
    _randomise_batchnorm(model)
    return model


@pytest.fixture
def shared_output_net(register):
    return _tiny_backbone(register, "shared_output_net", _SharedOutput)


def test_a_fold_that_would_change_the_features_is_refused_and_the_model_runs_eagerly(
        shared_output_net, caplog):
    x = _images(2, 16)
    _, n, error = fold_batchnorm(shared_output_net, x)
    assert n == 1 and error > 100 * TOLERANCE
    with caplog.at_level(logging.WARNING, logger="featx"):
        runner = prepare(shared_output_net, "fold", CPU, batch_size=2)
    assert runner.model is shared_output_net and runner.execution == "eager"
    assert any("running it eagerly instead" in m for m in caplog.messages)


@pytest.fixture
def tiny_bn_net(register):
    return _tiny_backbone(register, "tiny_bn_net", lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)))


def test_compiled_features_match_eager_on_a_short_batch(tiny_bn_net, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # compiled here, not reused
    x = _images(3, 16).contiguous(memory_format=torch.channels_last)  # shorter than the batch
    runner = prepare(tiny_bn_net, "compile", CPU, batch_size=4)
    with torch.inference_mode():
        want, got = tiny_bn_net(x), runner(x)
    assert got.shape == want.shape and _relative_error(want, got) < TOLERANCE


def test_a_compiled_model_sees_one_batch_size_only():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x.flatten(1).float().sum(1, keepdim=True)

    fixed = FixedBatch(Recorder(), batch_size=4)
    x = _images(3, 8)
    out = fixed(x)
    assert seen == [4] and torch.equal(out, Recorder()(x))


def test_unknown_execution_is_refused_before_any_image_is_read(tmp_path):
    with pytest.raises(featx.ConfigError, match=r"^unknown `execution` 'fast': choose one of auto, "
                                                r"eager, fold, compile, onnxruntime, openvino$"):
        featx.extract(tmp_path / "does-not-exist", runtime=featx.Runtime(execution="fast"))


def test_extract_folded_and_decoded_beside_the_model_match_the_plain_path(tmp_path):
    data = write_folder(tmp_path / "data", {"": 3})
    for i in range(3):  # JPEGs, which decode="device" hands to torchvision's decoder
        write_image(data / "red" / f"photo{i}.jpg", COLOURS["red"], size=(300, 240), seed=i)
    plain = featx.open_cache(featx.extract(data, out=tmp_path / "eager.h5", runtime=featx.Runtime(
        workers=0, progress=False, execution="eager", decode="cpu")).path)
    fast = featx.open_cache(featx.extract(data, out=tmp_path / "fast.h5", runtime=featx.Runtime(
        workers=0, progress=False, execution="fold", decode="device")).path)
    assert plain.paths == fast.paths and len(plain.paths) == 9
    assert (fast.attrs["execution"], fast.attrs["decode"]) == ("fold", "device")
    cos = (plain.features * fast.features).sum(1) / (
        np.linalg.norm(plain.features, axis=1) * np.linalg.norm(fast.features, axis=1))
    assert cos.min() > 0.9999


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("0", "0")])
def test_importing_featx_turns_on_huge_pages_for_torch_unless_the_user_chose(given, seen):
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    code = "import os, featx; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == seen
