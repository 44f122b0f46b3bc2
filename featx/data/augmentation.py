"""Random views of training images for fine-tuning, cut to the backbone's input size.

They end as uint8 tensors like ``Preprocessing.crop``'s, so the backbone's own normalisation
(mean/std, applied beside the model) follows unchanged; validation images get the plain crop.
Torch-free at import: the command line lists AUGMENTATIONS without loading torchvision.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from ..backbones.preprocessing import Preprocessing, bounded
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

AUGMENTATIONS = ("crop", "flip", "rotate", "color")


def check_augment(augment: Collection[str]) -> tuple[str, ...]:
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise ConfigError(f"unknown augmentation {', '.join(unknown)}: choose from "
                          f"{', '.join(AUGMENTATIONS)} (or none)")
    return tuple(a for a in AUGMENTATIONS if a in augment)


def train_transform(p: Preprocessing, augment: Collection[str] = AUGMENTATIONS
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """``crop``: a random 50–100 % of the image, resized to the input size (else the plain resize
    and centre crop); ``flip``: left-right; ``rotate``: up to ±10°; ``color``: ±20 % brightness,
    contrast and saturation. Gentle on purpose: the weights are already good, and a fine-tune
    runs for a few epochs, not the hundreds that strong augmentation needs to pay off."""
    from torchvision.transforms import InterpolationMode, v2

    augment = check_augment(augment)
    interpolation = InterpolationMode(p.interpolation)
    # On uint8 tensors from the start, as ``Preprocessing.crop`` resizes: torch's resampling is
    # the faster, and without augmentations the two give the same pixels.
    steps: list[Callable] = [v2.PILToTensor()]
    if "rotate" in augment:
        steps.append(v2.RandomRotation(10, interpolation=InterpolationMode.BILINEAR))
    if "crop" in augment:
        steps.append(v2.RandomResizedCrop(p.crop_size, scale=(0.5, 1.0), interpolation=interpolation,
                                          antialias=True))
    else:
        steps += [v2.Lambda(bounded), v2.Resize(p.resize_size, interpolation, antialias=True),
                  v2.CenterCrop(p.crop_size)]
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    if "color" in augment:
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    return v2.Compose(steps)
