"""The fine-tuning recipe: every setting that decides what a fine-tune learns, with its measured
defaults written here alone (no torch, so that the command line's help costs none)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.augmentation import AUGMENTATIONS, check_augment
from ..errors import ConfigError
from ..runtime import MAX_BATCH

# Settings that decide nothing an epoch learns, only when training stops and what is kept after:
# they may change when a run is resumed.
AFTER_TRAINING = ("patience", "mix", "keep")

# What a fine-tune's bundle holds: "auto", the fine-tuned model where its gain over the head is
# resolved by the validation images, else the head; "finetuned", the fine-tuned model regardless.
KEEP = ("auto", "finetuned")


@dataclass(frozen=True)
class Recipe:
    """``unfreeze``: top:N (the last N blocks of the base), all, none, or auto (the backbone's
    default, else the top third of its blocks). ``train_bn``: let BatchNorm re-estimate its
    statistics (default: kept frozen). ``lr`` is AdamW's peak rate after ``warmup`` epochs (a
    third of the dense heads' rate: a tenth fell short on flowers128), then a cosine decay to
    zero; each lower block learns at ``lr_decay`` times the rate of the one above. ``clip``: the
    gradient norm (0: no clipping). Training stops after ``patience`` epochs without a better
    validation accuracy (by default never before the last: an epoch chosen early on a noisy
    validation set is noise, and the schedule's low-rate end is where fine-tuning settles).
    ``mix``: then try the best epoch's weights mixed with the head's (WiSE-FT), the mixing
    weight chosen on validation. ``keep``: auto keeps the fine-tuned model only where its gain
    over the head is larger than the validation images can resolve (a 95 % interval above
    zero), else the head as fit-head wrote it; finetuned keeps the fine-tuned model whatever the
    gain. ``augment``: from ``AUGMENTATIONS``; ``seed`` seeds shuffling, augmentation and
    dropout, per epoch."""

    unfreeze: str = "auto"
    train_bn: bool = False
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    lr_decay: float = 1.0
    weight_decay: float = 0.01
    warmup: float = 1.0
    clip: float = 1.0
    augment: tuple[str, ...] = AUGMENTATIONS
    patience: int = 10
    mix: bool = True
    keep: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", check_augment(self.augment))
        limits = dict(epochs=(self.epochs >= 1, "at least 1"),
                      batch_size=(1 <= self.batch_size <= MAX_BATCH, f"from 1 to {MAX_BATCH}"),
                      lr=(self.lr > 0, "above 0"),
                      lr_decay=(0 < self.lr_decay <= 1, "above 0 and at most 1"),
                      weight_decay=(self.weight_decay >= 0, "at least 0"),
                      warmup=(self.warmup >= 0, "at least 0"),
                      clip=(self.clip >= 0, "at least 0 (0: no clipping)"),
                      patience=(self.patience >= 1, "at least 1"))
        if self.keep not in KEEP:
            raise ConfigError(f"`keep` {self.keep}: choose from {', '.join(KEEP)}")
        for name, (ok, allowed) in limits.items():
            if not ok:
                raise ConfigError(f"`{name}` {getattr(self, name)}: must be {allowed}")

    def to_dict(self) -> dict:
        """As JSON keeps it (in a checkpoint, a bundle): the augmentations as a list."""
        return dict(dataclasses.asdict(self), augment=list(self.augment))
