"""Features from inside the base (--layer): the module's own output, pooled; part of the cache
key; listed by `featx backbones NAME --layers`; carried through fit-head, score and finetune."""

from __future__ import annotations

import pytest
import torch

import featx
from featx.backbones.extractor import backbone_layers, blocks
from featx.backbones.registry import get_backbone
from featx.backbones.shapes import layer_shapes
from featx.backbones.spec import pooled_dim
from featx.cli import main

from conftest import QUIET, fast

IMAGES = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(1))


def hooked(model: featx.FeatureExtractor, names: list[str]) -> dict[str, torch.Tensor]:
    """Each named module's output in a forward pass of the whole base, caught by a hook."""
    caught, modules = {}, dict(model.base.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: caught.__setitem__(n, out))
               for n in names]
    with torch.no_grad():
        model(IMAGES)
    for h in handles:
        h.remove()
    return caught


@pytest.mark.parametrize("pool", ["avg", "max", "flatten"])
def test_layers_give_what_a_hook_on_the_same_modules_sees(lite0_random, pool):
    names = ["4", "12.depthwise.2"]
    cut = featx.load_backbone("efficientnet_lite0", weights="none", pool=pool, layers=tuple(names))
    with torch.no_grad():
        got = cut(IMAGES)
    maps = hooked(lite0_random, names)
    want = torch.cat([m.flatten(1) if pool == "flatten" else m.mean((2, 3)) if pool == "avg"
                      else m.amax((2, 3)) for m in (maps[n] for n in names)], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape[1] == cut.feature_dim
    assert cut.identity().layers == "4,12.depthwise.2" and cut.identity().key("float32") != \
        lite0_random.identity().key("float32")
    assert len(list(cut.base.parameters())) < len(list(lite0_random.base.parameters()))  # cut after 12


def test_a_transformers_tokens_are_pooled_over_tokens(register):
    register(featx.timm_backbone("test_vit.r160_in1k"))
    whole = featx.load_backbone("test_vit.r160_in1k", weights="none")
    cut = featx.load_backbone("test_vit.r160_in1k", weights="none", layers=("blocks.1",))
    images = IMAGES[:, :, :160, :160]
    caught = {}
    whole.base.blocks[1].register_forward_hook(lambda m, a, out: caught.setdefault("x", out))
    with torch.no_grad():
        whole(images)
        torch.testing.assert_close(cut(images), caught["x"].mean(1))
    # Fine-tuning counts timm's units up to the one that holds the layer: stem, blocks 0 and 1.
    units = blocks(cut)
    assert len(units) == 3
    assert {id(p) for p in cut.base.blocks[1].parameters()} == {id(p) for p in units[-1].parameters()}


def test_vgg16_block5_pool_flattened_is_the_recipes_25088_features():
    spec = get_backbone("vgg16")
    assert layer_shapes(spec, ("30",)) == [(512, 7, 7)]
    assert pooled_dim((512, 7, 7), "flatten") == 25088 and pooled_dim((197, 768), "avg") == 768
    assert ("30", "MaxPool2d", (512, 7, 7)) in backbone_layers("vgg16")
    # Swin's maps are N×H×W×C: pooled over the positions, to its channels.
    assert layer_shapes(get_backbone("swin_t"), ("features.1",)) == [(56, 56, 96)]
    assert pooled_dim((56, 56, 96), "avg", channels_last=True) == 96


def test_layers_that_give_no_features_are_refused_in_a_line():
    vit = get_backbone("vit_b_16")
    with pytest.raises(featx.ConfigError, match="layer 'encoder.layers.encoder_layer_0.self_attention' "
                                                "gives no single tensor of features"):
        layer_shapes(vit, ("encoder.layers.encoder_layer_0.self_attention",))  # a tuple
    with pytest.raises(featx.ConfigError, match="names a layer twice"):
        featx.load_backbone(weights="none", layers=("4", "4"))


def test_a_batchnorm_layer_is_not_folded_away():
    from featx.extraction.execution.fold import fold_batchnorm, probe_batch

    cut = featx.load_backbone(weights="none", layers=("0.1", "16"))
    folded, n, error = fold_batchnorm(cut, probe_batch(cut))
    assert n > 0 and error < 1e-4  # the others are folded, and the features are the same
    assert isinstance(folded.base.get_submodule("0.1"), torch.nn.BatchNorm2d)


def test_layers_are_listed_and_a_wrong_one_is_refused_before_any_work(capsys, split_folder):
    assert main(["backbones", "efficientnet_lite0", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "12.depthwise.2" in out and "ReLU6" in out and "112x112" in out
    assert main(["extract", str(split_folder), "--weights", "none", "--layer", "12.depthwise.9",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("featx: error: efficientnet_lite0 has no layer '12.depthwise.9': did you mean 12.")
    assert err.endswith("? `featx backbones efficientnet_lite0 --layers` lists them\n")
    assert err.count("\n") == 1
    assert not (split_folder.parent / "cache").exists()
    assert main(["backbones", "vgg16"]) == 1
    assert "add --layers" in capsys.readouterr().err


def test_layer_features_go_through_every_stage(split_folder, tmp_path):
    # Torch with BatchNorm folded, as exporting a graph for these features would take longer
    # than the rest of the test.
    folded = fast(execution="fold")
    r = featx.extract(split_folder, layers=("16",), pool="max", **folded)
    assert "efficientnet_lite0-16-max-" in r.path.name
    cache = featx.open_cache(r.path)
    assert cache.identity.layers == "16" and cache.features.shape == (22, 320)
    assert featx.extract(split_folder, **folded).path != r.path  # another key, another cache
    fit = featx.fit_head(r.path)
    s = featx.score(split_folder / "test", fit.bundle, runtime=folded["runtime"])
    assert s.accuracy == fit.metrics["test"]["accuracy"]
    tuned = featx.finetune(split_folder, fit.bundle, recipe=featx.Recipe(unfreeze="top:1", epochs=1,
                                                                        keep="finetuned"), runtime=QUIET)
    model = featx.load_backbone(weights="none", pool="max", layers=("16",))
    assert len(blocks(model)) == 17 and tuned.trainable == \
        sum(p.numel() for p in blocks(model)[-1].parameters()) + 320 * 2 + 2
    again = featx.score(split_folder / "test", tuned.bundle, runtime=folded["runtime"])
    assert again.accuracy == tuned.metrics["test"]["accuracy"]
