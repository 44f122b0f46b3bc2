"""The network being fine-tuned: backbone and head as one, which blocks of the base learn, at
which rates, and the warm-up + cosine schedule they follow."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.extractor import FeatureExtractor, blocks
from ..errors import ConfigError
from .recipe import Recipe


class Classifier(nn.Module):
    """Backbone and head as one network: uint8 images in, logits out."""

    def __init__(self, extractor: FeatureExtractor, head: nn.Module):
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(images))


def resolve_unfreeze(unfreeze: str, extractor: FeatureExtractor) -> tuple[str, list[nn.Module]]:
    """``auto`` (the backbone's default: its own, else the top third), ``top:N``, ``all`` or
    ``none``; returns it as ``top:N`` and the blocks it names, lowest first."""
    found = blocks(extractor)
    if unfreeze == "auto":
        n = extractor.spec.finetune_top or math.ceil(len(found) / 3)
    elif unfreeze in ("all", "none"):
        n = len(found) if unfreeze == "all" else 0
    elif unfreeze.startswith("top:") and unfreeze[4:].isdigit():
        n = int(unfreeze[4:])
    else:
        raise ConfigError(f"`unfreeze` {unfreeze!r}: use top:N (the last N of {extractor.spec.name}'s "
                          f"{len(found)} blocks), all, none or auto")
    if n > len(found):
        raise ConfigError(f"`unfreeze` {unfreeze}: {extractor.spec.name} has only {len(found)} blocks; "
                          f"use top:{len(found)} or all")
    return f"top:{n}", found[len(found) - n:]


def learned_keys(model: Classifier, top: list[nn.Module]) -> list[str]:
    """The state entries fine-tuning can change: the head's and the unfrozen blocks' (weights,
    and BatchNorm statistics, which ``train_bn`` lets move); all else is the base as it was
    loaded, so a snapshot keeps only these. Found by identity, as a block may group parts of
    the base."""
    owned = {id(t) for unit in [model.head, *top] for t in (*unit.parameters(), *unit.buffers())}
    return [k for k, v in model.state_dict(keep_vars=True).items() if id(v) in owned]


def mixed(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
          ) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., 2022): the weights ``alpha`` of the way from ``start`` (the head
    on the pretrained base) to ``end`` (fine-tuned). Both lie in one basin, as fine-tuning at a
    low rate moves little, so the line between them stays good, and its middle often beats both
    ends on new images: the fine-tune's gain, with less of what it fitted to the few it saw."""
    return {k: torch.lerp(v, end[k], alpha) if v.is_floating_point() else (end[k] if alpha else v)
            for k, v in start.items()}


def param_groups(model: Classifier, top: list[nn.Module], lr: float, lr_decay: float,
                 weight_decay: float) -> list[dict]:
    """The head and the top block learn at ``lr``, each block below at ``lr_decay`` times the rate
    of the one above; biases and norm scales get no weight decay."""
    groups = []
    for depth, unit in enumerate([model.head, *reversed(top)]):
        rate = lr * lr_decay ** max(depth - 1, 0)
        params = [p for p in unit.parameters() if p.requires_grad]
        groups += [dict(params=[p for p in params if p.ndim > 1], lr=rate, weight_decay=weight_decay),
                   dict(params=[p for p in params if p.ndim <= 1], lr=rate, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def schedule(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
             ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``recipe.warmup`` epochs, then cosine decay to zero at the last step;
    stepped once per optimizer step, and saved with the checkpoint."""
    warmup, total = round(recipe.warmup * steps_per_epoch), recipe.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_mode(model: Classifier, top: list[nn.Module], train_bn: bool) -> None:
    # Frozen blocks stay in inference mode, and so do BatchNorm layers in the unfrozen ones unless
    # asked: their running statistics, estimated on all of ImageNet, are worth more than any
    # re-estimate from a few small batches.
    model.eval()
    model.head.train()
    for block in top:
        block.train()
        if not train_bn:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
