"""A sanity check before any head is fitted: every image under a folder through the backbone's
own ImageNet classifier, its top-k ImageNet labels written to a CSV and shown on screen.

If a photo of a tabby comes out as "tabby" or "tiger cat", the weights, the decoding and the
preprocessing that extraction uses are all right; if it comes out as "window screen", one is not.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.extractor import FeatureExtractor, FeatureSpec
from ..backbones.registry import DEFAULT_BACKBONE, TOP_LABELS, get_backbone
from ..backbones.weights import resolve
from ..data.folders import scan_unlabelled
from ..errors import ConfigError
from ..extraction.local import loader
from ..extraction.placement import place
from ..runtime import Runtime
from ..util.files import cell, check_csv_path, durable_write, result_name
from ..util.progress import progress_bar

# Lines of images ``ClassifyResult.summary`` shows; the CSV has every one.
SHOWN = 50


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in the order an ImageNet classifier outputs them, as
    torchvision's weights carry them (every one of its ImageNet weights has this same list)."""
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.DEFAULT.meta["categories"]


@dataclass
class ClassifyResult:
    csv: Path
    backbone: str
    rows: list[tuple[str, list[tuple[str, float]]]]  # (path, its top labels and probabilities)
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of skipped images

    @property
    def n_failed(self) -> int:
        return len(self.failed)
def _capped(lines: list[str], limit: int) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... {len(lines) - limit} more in the CSV"]


def classify(folder: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
             weights: str | os.PathLike | None = None, top: int = TOP_LABELS,
             out: str | os.PathLike | None = None, runtime: Runtime | None = None,
             force: bool = False) -> ClassifyResult:
    """Classify every image below ``folder`` (recursively) into ImageNet's 1000 classes with the
    backbone's own classifier, and write one CSV row per image with its ``top`` labels.

    ``weights``: None for the backbone's default weights, or a state-dict path of the whole
    network (a fine-tuned one keeps its ImageNet layer); "none" (random init) is refused.
    ``out``: the CSV path (default ``cache/classify/FOLDER-BACKBONE-HASH.csv``); ``force``:
    replace one there that featx did not write, though never the weights. ``runtime``:
    device, batch size, workers and progress bar; images are decoded on the CPU and run through
    eager torch, as this is a check, not the throughput path.
    """
    start = time.perf_counter()
    placement = place(runtime).placement
    categories = imagenet_categories()
    if not 1 <= top <= len(categories):
        raise ConfigError(f"`top` must be between 1 and {len(categories)}, not {top}")
    spec = get_backbone(backbone)
    if weights is not None and str(weights) == "none":
        raise ConfigError(f"`weights` none gives {backbone} random weights, whose ImageNet head "
                          f"means nothing: leave out `weights` to use its ImageNet weights")
    dataset = scan_unlabelled(folder)
    # The whole network as the extractor's base: its weights are loaded, and its input
    # normalised, exactly as for extraction.
    model = FeatureExtractor(FeatureSpec(dataclasses.replace(spec, tap=lambda m: m)), resolve(spec, weights))
    folder = Path(folder)
    # The weights' hash in the name keeps default and fine-tuned weights' results apart.
    csv_path = Path(out) if out else Path("cache") / "classify" / result_name(
        folder, model.spec.name, model.weights.sha256)
    check_csv_path(csv_path, [Path(weights)] if weights is not None else [], force)
    device = placement.device
    model.to(device)
    _check_head(model, device, len(categories))

    tops: dict[int, list[tuple[str, float]]] = {}
    failed: dict[int, str] = {}
    bar = progress_bar(len(dataset.samples), "classify", enabled=placement.progress)
    with bar, torch.inference_mode(), placement.autocast():
        for batch in loader(model, dataset, placement, on_device=False):
            failed.update(batch.failed)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True)
                proba = model.base(model.normalise(images)).float().softmax(1)
                p, k = (t.tolist() for t in proba.topk(top))
                for i, pi, ki in zip(batch.indices, p, k, strict=True):
                    tops[i] = [(categories[c], v) for c, v in zip(ki, pi, strict=True)]
            bar.update(len(batch.indices) + len(batch.failed))

    paths = [s.path.as_posix() for s in dataset.samples]
    try:
        _write_csv(csv_path, paths, top, tops, failed)
    except OSError as e:
        raise ConfigError(f"cannot write {csv_path} ({e.strerror or e}): choose another `out`") from e
    return ClassifyResult(csv_path, backbone, [(paths[i], tops[i]) for i in sorted(tops)],
                          time.perf_counter() - start, [(paths[i], failed[i]) for i in sorted(failed)])


def _check_head(model: FeatureExtractor, device: torch.device, n_classes: int) -> None:
    """Refuse, before any image is read, a network whose output is not one score per ImageNet
    class (a plug-in backbone built without its classifier, or trained for other classes)."""
    size = model.preprocessing.crop_size
    with torch.inference_mode():
        shape = tuple(model.base(torch.zeros(1, 3, size, size, device=device)).shape)
    if shape != (1, n_classes):
        raise ConfigError(f"{model.spec.name}'s own network outputs {'x'.join(map(str, shape[1:]))} "
                          f"values per image, not {n_classes} ImageNet class scores, so it cannot "
                          f"classify: use a backbone with an ImageNet classifier, such as "
                          f"{DEFAULT_BACKBONE}")


def _write_csv(path: Path, paths: list[str], top: int, tops: dict[int, list[tuple[str, float]]],
               failed: dict[int, str]) -> None:
    """One row per image, in the folder's order: its path, its ``top`` labels each with its
    probability, and why it was skipped."""
    # A file name that is not valid UTF-8 is written as its own bytes, as the file system has it.
    with durable_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                          errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", *(f"{c}{r}" for r in range(1, top + 1) for c in ("label", "p")), "error"])
        for i, name in enumerate(paths):
            if i in failed:
                w.writerow([cell(name), *[""] * (2 * top), cell(failed[i])])
                continue
            w.writerow([cell(name), *(x for label, p in tops[i] for x in (cell(label), f"{p:.6f}")),
                        ""])
