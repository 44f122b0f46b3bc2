"""timm's bases: registered with timm's own preprocessing and block lists, weights named in one
line when they cannot be downloaded, and a whole run (extract, fit-head, score, finetune) on one
with random weights."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from timm.models import get_pretrained_cfg

import featx
from featx.backbones import timm_zoo
from featx.backbones.extractor import blocks
from featx.backbones.registry import get_backbone, unregister
from featx.backbones.shapes import meta_base
from featx.backbones.weights import hub_path
from featx.cli import main

from conftest import write_folder

EAGER = featx.Runtime(workers=0, progress=False, execution="eager")
TINY = "test_vit.r160_in1k"  # timm's own test model: a 160 px ViT of 0.3M parameters


@pytest.mark.parametrize("name", list(timm_zoo.MODELS))
def test_each_timm_base_is_registered_with_timms_preprocessing_and_units(name):
    spec, cfg = get_backbone(name), get_pretrained_cfg(name)
    p = spec.preprocessing
    assert (p.crop_size, p.interpolation) == (cfg.input_size[-1], cfg.interpolation)
    assert p.resize_size == math.floor(cfg.input_size[-1] / cfg.crop_pct)
    assert p.mean == pytest.approx(cfg.mean) and p.std == pytest.approx(cfg.std)
    assert spec.weights_url == f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
    assert f"huggingface.co/timm/{name}" in spec.source
    base = meta_base(spec)
    found = blocks(SimpleNamespace(spec=spec, base=base, layers=()))
    held = [id(p) for unit in found for p in unit.parameters()]
    assert len(held) == len(set(held)) and set(held) == {id(p) for p in base.parameters()}
    assert len(found) >= 6


def test_offline_the_weights_are_one_line_naming_url_and_file(torch_home, split_folder, capsys):
    name = "vit_small_patch14_dinov2.lvd142m"
    dest = torch_home / "hub" / "checkpoints" / f"timm-{name}.safetensors"
    assert hub_path(get_backbone(name)) == dest
    assert main(["extract", str(split_folder), "--backbone", name, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"featx: error: cannot download the {name} weights (")
    assert err.endswith(f"): download https://huggingface.co/timm/{name}/resolve/main/model.safetensors "
                        f"and put it at {dest}, or pass --weights PATH\n")


def test_a_name_timm_has_no_weights_for_is_one_line():
    with pytest.raises(featx.UnknownBackboneError, match="timm has no model 'convnext_tinny' with weights"):
        featx.timm_backbone("convnext_tinny")
    with pytest.raises(featx.UnknownBackboneError, match="Invalid pretrained tag"):
        featx.timm_backbone("convnext_tiny.nosuchtag")


def test_without_timm_its_bases_say_how_to_install_it():
    name = "vit_base_patch16_clip_224.openai"
    spec = unregister(name)
    try:
        with pytest.raises(featx.UnknownBackboneError, match=r"comes from timm, which is not installed: "
                                                              r"pip install 'featx\[timm\]'"):
            get_backbone(name)
    finally:
        featx.register(spec)


def test_a_timm_base_runs_every_stage(register, tmp_path):
    spec = register(featx.timm_backbone(TINY))
    root = write_folder(tmp_path / "colours", {"train": 6, "val": 3, "test": 2})
    cache = featx.extract(root, backbone=TINY, weights="none", runtime=EAGER).path
    assert featx.open_cache(cache).features.shape == (22, 64)
    fit = featx.fit_head(cache)
    s = featx.score(root / "test", fit.bundle, runtime=EAGER)
    assert s.n_scored == 4 and s.accuracy == fit.metrics["test"]["accuracy"]
    # Two of timm's own units, the last block with the final norm among them.
    tuned = featx.finetune(root, fit.bundle, runtime=EAGER,
                           recipe=featx.Recipe(unfreeze="top:2", epochs=1, keep="finetuned"))
    model = featx.load_backbone(TINY, weights="none")
    units = blocks(model)
    assert tuned.trainable == sum(p.numel() for u in units[-2:] for p in u.parameters()) + 64 * 2 + 2
    assert model.base.norm in units[-1].modules()
    again = featx.score(root / "test", tuned.bundle, runtime=EAGER)
    assert again.accuracy == tuned.metrics["test"]["accuracy"]
    black = torch.zeros(1, 3, 160, 160, dtype=torch.uint8)
    with torch.no_grad():  # random weights, seeded: the same each time
        assert torch.equal(featx.load_backbone(TINY, weights="none")(black), model(black))
    assert spec.name in featx.list_backbones()
