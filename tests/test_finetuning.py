"""finetune(): the head handed over unchanged, what stays frozen, resuming, and the bundle it writes."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tqdm import tqdm

import featx
from featx.backbones import torchvision_zoo
from featx.backbones.extractor import blocks, save_weights
from featx.cli.text import summary
from featx.data.augmentation import AUGMENTATIONS, train_transform
from featx.data.readers import Batch, ImageReader
from featx.evaluation import Predictions, paired_gain
from featx.finetuning import checkpoint, loop
from featx.finetuning.model import Classifier, learned_keys, mixed, param_groups, resolve_unfreeze, train_mode
from featx.heads.torch_head import as_torch_head

from conftest import FAST, QUIET, write_folder, write_image


def tiny(**recipe) -> dict:
    """Tiny data, one step per epoch, and a rate high enough that one step visibly moves the
    weights; ``recipe``: other ``Recipe`` settings."""
    return {"recipe": featx.Recipe(**{"unfreeze": "top:2", "lr": 1e-3, **recipe}), "runtime": QUIET}


TINY = tiny()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A logistic bundle fitted on random-weight features of reddish and bluish noise, in float32
    as fine-tuning computes on a CPU, so that its epoch 0 has the head's own figures."""
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 6, "val": 3, "test": 2})
    cache = featx.extract(root, out=root.parent / "colours.h5", dtype="float32", **FAST).path
    return root, featx.fit_head(cache, "logistic").bundle


@pytest.mark.parametrize("model", ["logistic", "linear", "mlp"])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_a_converted_head_predicts_exactly_like_the_fitted_one(model, n_classes):
    rng = np.random.default_rng(n_classes)
    X = rng.normal(3, 5, (120, 20)).astype(np.float32)
    y = rng.integers(0, n_classes, 120)
    X[:, 0] += 3 * y
    head = featx.make_head(model, **({} if model == "logistic" else {"epochs": 3})).fit(X, y)
    converted = as_torch_head(head)
    np.testing.assert_allclose(converted.predict_proba(X), head.predict_proba(X), atol=1e-5)
    assert (converted.predict(X) == head.predict(X)).all()
    # Folded: the standardisation layer is now the identity, the first linear layer does its work.
    assert not converted.module_[0].mean.any() and (converted.module_[0].scale == 1).all()


def test_heads_without_a_torch_form_are_refused():
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2
    with pytest.raises(featx.ConfigError, match="starts from a logistic, linear or mlp head, not Pipeline"):
        as_torch_head(featx.make_head("knn", n_neighbors=3).fit(X, y))


def _one_step(model, top, train_bn):
    """One real training step of ``finetune`` on a batch of two random images."""
    optimizer = torch.optim.AdamW(param_groups(model, top, 1e-2, 1.0, 0.01))
    train_mode(model, top, train_bn)
    batch = Batch(indices=[0, 1], images=torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8),
                  digests=["", ""], failed=[])
    trainer = loop.Trainer(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                           torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), 1.0)
    loop.train_epoch(model, [batch], torch.tensor([0, 1]), trainer, tqdm(disable=True))


@pytest.mark.parametrize("train_bn", [False, True])
def test_a_step_leaves_frozen_weights_and_batchnorm_statistics_bit_identical(train_bn):
    model = Classifier(featx.load_backbone(weights="none"), torch.nn.Linear(1280, 2))
    unfreeze, top = resolve_unfreeze("top:3", model.extractor)
    for block in top:
        block.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model, top, train_bn)

    after = model.state_dict()
    top_keys = {f"extractor.base.{i}." for i in range(15, 18)}
    in_top = {k for k in after if any(k.startswith(p) for p in top_keys)}
    stats = {k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert unfreeze == "top:3" and in_top
    assert not changed - in_top - {"head.weight", "head.bias"}  # nothing below the top moved
    assert {k for k in in_top if k.endswith("0.weight")} <= changed  # every top conv learned
    assert (changed & stats == set()) != train_bn  # statistics move only when asked to


def test_unfreeze_choices(lite0_random):
    n = len(blocks(lite0_random))
    assert n == 18  # stem, 16 MBConv blocks, head convolution
    assert resolve_unfreeze("auto", lite0_random)[0] == "top:6"
    assert resolve_unfreeze("all", lite0_random)[0] == "top:18"
    assert resolve_unfreeze("none", lite0_random) == ("top:0", [])
    assert resolve_unfreeze("top:2", lite0_random)[1] == blocks(lite0_random)[-2:]
    with pytest.raises(featx.ConfigError, match="has only 18 blocks; use top:18 or all"):
        resolve_unfreeze("top:19", lite0_random)
    with pytest.raises(featx.ConfigError, match="use top:N .the last N of efficientnet_lite0's 18 blocks"):
        resolve_unfreeze("half", lite0_random)
    vgg = featx.load_backbone("vgg11", weights="none")
    assert resolve_unfreeze("auto", vgg)[0] == "top:3"  # its last conv block


# One model of each torchvision family, and the offline default.
ONE_OF_EACH = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
               "maxvit_t", "mnasnet0_5", "mobilenet_v3_small", "regnet_x_400mf", "resnet18",
               "resnext50_32x4d", "wide_resnet50_2", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
               "vgg11", "vgg11_bn", "vit_b_32", "efficientnet_lite0"]


def test_every_family_is_cut_into_units_that_hold_each_weight_once():
    assert {torchvision_zoo._family(n) for n in ONE_OF_EACH[:-1]} == set(torchvision_zoo._FAMILIES)
    for name in ONE_OF_EACH:
        spec = featx.backbones.registry.get_backbone(name)
        try:
            with torch.device("meta"):  # the structure without the memory or the initialisation
                base = spec.tap(spec.build())
        except NotImplementedError:  # RegNet computes its widths from tensors
            base = spec.tap(spec.build())
        found = blocks(SimpleNamespace(spec=spec, base=base, layers=()))
        held = [id(p) for unit in found for p in unit.parameters()]
        assert len(held) == len(set(held)) and set(held) == {id(p) for p in base.parameters()}, name
        assert len(found) >= 4, name
        assert 0 < (spec.finetune_top or math.ceil(len(found) / 3)) < len(found)  # auto: the top only
    vit = featx.backbones.registry.get_backbone("vit_b_32")
    with torch.device("meta"):
        base = vit.tap(vit.build())
    found = blocks(SimpleNamespace(spec=vit, base=base, layers=()))
    assert len(found) == 1 + 12 and found[0].class_token is base.class_token
    assert base.encoder.ln in found[-1].modules() and base.encoder.layers[-1] in found[-1].modules()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "googlenet"])
def test_saved_weights_load_back_as_the_same_backbone(tmp_path, name):
    # googlenet's tap drops its classifiers: the file must still load strictly.
    extractor = featx.load_backbone(name, weights="none")
    with torch.no_grad():
        next(blocks(extractor)[-1].parameters()).mul_(1.5)
    w = save_weights(extractor, tmp_path / "backbone.safetensors")
    again = featx.load_backbone(name, weights=w.path)
    x = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    assert again.identity().weights_sha256 == w.sha256
    assert torch.equal(again(x), extractor(x))


def test_augmentations_end_as_the_backbone_input(lite0_random, tmp_path):
    p = lite0_random.preprocessing
    image = featx.load_rgb(write_image(tmp_path / "a.png", size=(300, 200)))
    for augment in [("crop",), ("flip", "rotate", "color"), AUGMENTATIONS]:
        t = train_transform(p, augment)(image)
        assert t.dtype == torch.uint8 and t.shape == (3, 224, 224)
    assert torch.equal(train_transform(p, ())(image), p.crop(image))  # nothing random: the plain crop
    with pytest.raises(featx.ConfigError, match="unknown augmentation blur: choose from crop, flip"):
        train_transform(p, ("blur",))


def test_finetune_starts_where_the_head_was_and_writes_a_scorable_bundle(source, tmp_path):
    root, bundle = source
    r = featx.finetune(root, bundle, out=tmp_path / "tuned", **tiny(epochs=2, keep="finetuned"))
    fitted = featx.load_bundle(bundle)
    # Epoch 0 is the converted head on the backbone, before any step: the head's own figures.
    assert r.history[0].val_accuracy == fitted.metrics["val"]["accuracy"]
    assert r.history[0].val_loss == pytest.approx(fitted.metrics["val"]["loss"], rel=1e-4)
    assert [h.epoch for h in r.history] == [0, 1, 2]
    assert all(h.train_loss > 0 and h.images_per_second > 0 for h in r.history[1:])
    assert {m["n"] for m in r.metrics.values()} == {6, 4}  # val, then test once with the best weights
    assert r.unfreeze == "top:2" and r.trainable + r.frozen == sum(
        p.numel() for p in featx.load_backbone(weights="none").parameters()) + 1280 * 2 + 2
    assert sorted(p.name for p in r.bundle.iterdir()) == [
        "backbone.safetensors", "bundle.json", "confusion_val.png", "fitted_images.u64", "head.safetensors",
        "history.csv", "history.json", "history.png", "predictions.csv"]  # no checkpoint: gone with the run
    assert (r.bundle / "fitted_images.u64").read_bytes() == (bundle / "fitted_images.u64").read_bytes()
    # The best epoch, mixed with the head at a grid of weights and either side of the best of it.
    assert r.best_epoch > 0 and r.verdict.kept == "finetuned"
    alphas = [m.alpha for m in r.mixing]
    assert alphas[0] == 0 and alphas[-1] == 1 and {0.25, 0.5, 0.75} < set(alphas) and len(alphas) in (6, 7)
    assert r.mixing[0].val_accuracy == r.history[0].val_accuracy
    assert r.mixing[-1].val_loss == pytest.approx(r.history[r.best_epoch].val_loss, rel=1e-5)
    assert r.metrics["val"]["accuracy"] == max(m.val_accuracy for m in r.mixing[1:])
    assert re.search(r"val accuracy: head 1.0000 -> fine-tuned \d.\d{4} \(epoch \d", summary(r))
    assert re.search(r"gain [+-]\d+.\d\d points on 6 val images \(95% CI [+-]\d+.\d\d to [+-]\d+.\d\d; "
                     r"0 images newly right, \d newly wrong\): keeping the fine-tuned model", summary(r))

    tuned = featx.load_bundle(r.bundle)
    assert tuned.identity.weights_file == "backbone.safetensors"
    assert tuned.identity.weights_sha256 != fitted.identity.weights_sha256
    assert {k: tuned.info[k] for k in ("cache", "split_sha256")} == \
        {k: fitted.info[k] for k in ("cache", "split_sha256")}  # so it can be fine-tuned again
    moved = r.bundle.rename(tmp_path / "moved")  # the bundle finds its backbone inside itself
    s = featx.score(root / "val", moved, runtime=QUIET)
    assert s.accuracy == r.metrics["val"]["accuracy"]


def test_a_gain_the_validation_images_cannot_resolve_keeps_the_head_as_it_was(source, tmp_path):
    root, bundle = source
    r = featx.finetune(root, bundle, out=tmp_path / "tuned", **tiny(epochs=1))
    fitted = featx.load_bundle(bundle)
    assert r.verdict.kept == "head" and r.metrics == fitted.metrics
    assert "not more than 6 images can tell from chance, so the bundle keeps the head" in summary(r)
    assert r.finetuned_test["n"] == 4 and "(the fine-tuned model, not kept)" in summary(r)
    assert featx.load_bundle(r.bundle).info["finetuned_test"] == r.finetuned_test  # measured, not kept
    kept = featx.load_bundle(r.bundle)
    # The head fit-head wrote, on the pretrained base: scores reuse the folder's features.
    assert kept.identity == fitted.identity and kept.model == "logistic"
    assert kept.info["verdict"] == r.verdict.to_dict() and kept.info["cache"] == fitted.info["cache"]
    assert {"history.png", "predictions.csv", "confusion_val.png"} <= {p.name for p in r.bundle.iterdir()}
    assert "backbone.safetensors" not in {p.name for p in r.bundle.iterdir()}
    a, b = (featx.score(root / "test", path, runtime=QUIET, out=tmp_path / f"{name}.csv").csv.read_text()
            for name, path in (("a", bundle), ("b", r.bundle)))
    assert a == b


def test_weights_mix_along_the_line_from_the_head_to_the_fine_tuned_model(lite0_random):
    head = torch.nn.Linear(1280, 3)
    model = Classifier(lite0_random, head)
    top = blocks(lite0_random)[-2:]
    keys = learned_keys(model, top)
    assert any(k.startswith("head.") for k in keys) and any(".running_mean" in k for k in keys)
    assert not any(k.startswith("extractor.base.features.0.") for k in keys)  # frozen: never kept
    start = {k: v.clone() for k, v in model.state_dict().items() if k in keys}
    end = {k: v + 1 if v.is_floating_point() else v + 5 for k, v in start.items()}
    for alpha, want in ((0.0, start), (1.0, end)):
        got = mixed(start, end, alpha)
        assert all(torch.equal(got[k], want[k]) for k in keys)
    half = mixed(start, end, 0.5)
    torch.testing.assert_close(half["head.weight"], start["head.weight"] + 0.5)


@pytest.mark.parametrize("wins, losses, resolved", [(5, 0, True), (4, 0, True), (6, 3, False),
                                                    (10, 3, False), (30, 15, True), (0, 0, False)])
def test_a_gain_counts_only_where_the_disagreements_say_more_than_chance(wins, losses, resolved):
    n = 100
    labels = np.zeros(n, int)
    before = np.zeros(n, int)
    before[:40] = 1                        # wrong on the first 40 images
    after = before.copy()
    after[:wins] = 0                       # right after on some of them
    after[50:50 + losses] = 1              # right before, wrong after
    paths = [f"{i}.png" for i in range(n)]
    gain = paired_gain(Predictions(paths, labels, before, np.ones(n)),
                       Predictions(paths[::-1], labels[::-1], after[::-1], np.ones(n)))  # matched by path
    assert (gain.wins, gain.losses) == (wins, losses)
    assert gain.gain == pytest.approx((wins - losses) / n)
    assert gain.after - gain.before == pytest.approx(gain.gain)
    assert gain.low <= gain.gain <= gain.high
    assert (gain.low > 0) == resolved


class Interrupt:
    """Replaces ``loop.train_epoch``: runs it normally, except the ``at``-th call is a Ctrl-C."""

    def __init__(self, at: int):
        self.at, self.calls, self.real = at, 0, loop.train_epoch

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_an_interrupted_finetune_resumes_where_it_stopped(source, tmp_path, monkeypatch):
    root, bundle = source
    whole = featx.finetune(root, bundle, out=tmp_path / "whole", **tiny(epochs=2))

    monkeypatch.setattr(loop, "train_epoch", Interrupt(at=2))
    with pytest.raises(KeyboardInterrupt):
        featx.finetune(root, bundle, out=tmp_path / "cut", **tiny(epochs=2))
    assert (checkpoint.state_folder(tmp_path / "cut") / checkpoint.CHECKPOINT).is_file()
    monkeypatch.undo()
    with pytest.raises(featx.ConfigError, match="holds an unfinished fine-tune .* add `resume=True`"):
        featx.finetune(root, bundle, out=tmp_path / "cut", **tiny(epochs=2))
    with pytest.raises(featx.ConfigError, match="the interrupted run had lr=0.001, this one has lr=0.01"):
        featx.finetune(root, bundle, out=tmp_path / "cut", resume=True, **tiny(epochs=2, lr=1e-2))

    # When to stop and what to keep decide nothing an epoch learns: they may change on resuming.
    resumed = featx.finetune(root, bundle, out=tmp_path / "cut", resume=True,
                             **tiny(epochs=2, patience=5, mix=False))
    # Epochs 2 and 3 start from epoch 1's weights, optimizer state and seeds: the same run.
    for a, b in zip(whole.history[1:], resumed.history[1:], strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-7)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5, abs=1e-7)
    assert whole.best_epoch == resumed.best_epoch


def test_bad_requests_are_refused_before_any_work(source, tmp_path):
    root, bundle = source
    with pytest.raises(featx.ConfigError, match="nothing to resume"):
        featx.finetune(root, bundle, out=tmp_path / "new", resume=True, **TINY)
    with pytest.raises(featx.ConfigError, match="`lr_decay` 0: must be above 0 and at most 1"):
        tiny(lr_decay=0)
    unsaved = featx.load_bundle(bundle)
    unsaved.path = None
    with pytest.raises(featx.BundleError, match="starts from a saved bundle"):
        featx.finetune(root, unsaved, **TINY)
    other = write_folder(tmp_path / "other", {"": 3}, classes={"cat": (0, 0, 0), "dog": (9, 9, 9)})
    with pytest.raises(featx.DataError, match="has classes cat, dog, but the bundle .* blue, red"):
        featx.finetune(other, bundle, **TINY)


def test_a_pool_holds_out_what_the_head_held_out_and_refuses_once_that_is_unknown(tmp_path):
    pool = write_folder(tmp_path / "pool", {"": 5})
    cache = featx.extract(pool, **FAST).path
    bundle = featx.fit_head(cache, "logistic").bundle
    r = featx.finetune(pool, bundle, out=tmp_path / "tuned", **tiny(epochs=1))
    assert r.history[0].val_accuracy == featx.load_bundle(bundle).metrics["val"]["accuracy"]
    assert r.metrics["val"]["n"] == featx.load_bundle(bundle).metrics["val"]["n"] == 2

    write_image(pool / "red" / "late.png", (200, 50, 40), seed=99)
    featx.extract(pool, **FAST)  # the cache gains a row, and the seeded split shifts
    with pytest.raises(featx.DataError, match="has changed since the head in .* was fitted"):
        featx.finetune(pool, bundle, out=tmp_path / "again", **TINY)


def test_augmentation_draws_depend_on_the_image_not_on_who_reads_it_when(tmp_path):
    root = write_folder(tmp_path / "d", {"": 3})
    paths = [p.relative_to(root) for p in sorted(root.rglob("*.png"))]
    reader = ImageReader(root, paths, train_transform(featx.load_backbone(
        weights="none").preprocessing), seed=7)
    forward = [reader[i][1] for i in range(len(paths))]
    backward = [reader[i][1] for i in reversed(range(len(paths)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert not torch.equal(forward[0], ImageReader(root, paths, reader.transform, seed=8)[0][1])


def test_discriminative_rates(lite0_random):
    model = Classifier(lite0_random, torch.nn.Linear(1280, 2))
    _, top = resolve_unfreeze("top:3", lite0_random)
    for block in top:
        block.requires_grad_(True)
    groups = param_groups(model, top, 1e-3, 0.5, 0.01)
    rates = [next(g["lr"] for g in groups if any(p is q for q in g["params"]))
             for p in (model.head.weight, *(next(b.parameters()) for b in reversed(top)))]
    assert rates == [1e-3, 1e-3, 5e-4, 2.5e-4]  # head and top block at lr, then halving
    for block in top:
        block.requires_grad_(False)  # lite0_random is shared by the session
