"""How pixels are prepared for a backbone: resize, centre crop, then mean/std on the device.

The reader's part (resize and crop a PIL image to a uint8 tensor) runs in DataLoader workers; the
float conversion and normalisation run beside the model (``FeatureExtractor``), where they are
nearly free and keep the tensors sent between processes four times smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

# torchvision's InterpolationMode values, so that a spec is checked without importing torch.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
# How many times its shorter side an image's longer side may be when it is resized whole. What the
# resize allocates grows with the longer side, not with the file: a 118-byte PNG of 1×12000 px
# resized to a 256 px shorter side is a 2.4 GB image. The centre crop keeps at most a shorter side's
# worth of the longer one, so a more elongated image is first cut to this much of its centre: the
# kept pixels move by a rounding at most, and no resize makes more than MAX_ASPECT squares of
# the resize size.
MAX_ASPECT = 4


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone's weights were trained with; the transform is built from this alone.
    Torch-free until an image is cropped, so that specs, caches and bundles describe it without
    torch."""

    resize_size: int
    crop_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:  # at construction, not in a worker process
            raise ConfigError(f"unknown interpolation {self.interpolation!r}: choose one of "
                              f"{', '.join(INTERPOLATIONS)}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{k: d[k] for k in ("resize_size", "crop_size", "interpolation", "mean", "std")})

    def crop(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side, centre-crop, and return a 3×crop×crop uint8 tensor."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        # Resized as a uint8 tensor, by torch's vectorised resampling rather than PIL's: 2-2.5x as
        # fast on 128 px JPEGs with the same pixels, 1.25-1.7x on ~500 px photos with no pixel off
        # by more than 2 of 255, and the probe's accuracy unchanged on both (README, Speed).
        image = TF.resize(bounded(TF.pil_to_tensor(image)), [self.resize_size],
                          InterpolationMode(self.interpolation), antialias=True)
        return TF.center_crop(image, [self.crop_size])


def bounded(image: torch.Tensor) -> torch.Tensor:
    """The centre of an image (…×H×W) at most MAX_ASPECT times as long as it is wide or high: all
    that a resize of its shorter side and a centre crop keep. A view, so nothing is copied."""
    height, width = image.shape[-2:]
    longest = MAX_ASPECT * min(height, width)
    top, left = max(0, (height - longest) // 2), max(0, (width - longest) // 2)
    return image[..., top:top + longest, left:left + longest]
