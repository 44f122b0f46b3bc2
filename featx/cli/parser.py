"""The command line's parser: every command, its options and their help, each default read from
the library. Everything imported here is torch-free, so that `featx --help` starts at once."""

from __future__ import annotations

import argparse
import ast

from ..auditing.options import FOLDS, SIMILARITY
from ..backbones.identity import DTYPES
from ..backbones.registry import DEFAULT_BACKBONE, TOP_LABELS
from ..backbones.spec import POOLS
from ..fitting.options import MAX_MEMORY, SEED, STREAM_EPOCHS, VAL_SPLIT
from ..heads.registry import DEFAULT_HEAD, HEADS
from ..runtime import Runtime
from ..util.files import size_text
from ..version import __version__
from .commands import COMMANDS
from .options import add_data, add_engine, add_recipe, add_runtime, default_of

EXAMPLES = {
    "backbones": "featx backbones",
    "check": "featx check data/hymenoptera",
    "extract": "featx extract data/hymenoptera --backbone resnet50",
    "fit-head": "featx fit-head cache/hymenoptera-efficientnet_lite0-avg-0123456789.h5 --model mlp",
    "audit": "featx audit cache/hymenoptera-efficientnet_lite0-avg-0123456789.h5",
    "finetune": "featx finetune data/pets --from cache/pets-efficientnet_lite0-avg-0123456789.logistic",
    "score": "featx score new_photos/ --model cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
    "export": "featx export cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
    "classify": "featx classify data/hymenoptera/val --top 3",
    "info": "featx info cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
    "report": "featx report cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
    "demo": "featx demo",
}


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """Bytes, with an optional binary unit: ``512M``, ``2G``."""
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    try:
        size = int(float(number) * _UNITS[unit])
    except (KeyError, ValueError):
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx", description="Transfer learning on cached features of a frozen pretrained CNN.")
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"example: {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=COMMANDS[name], parser=p)
        return p

    p = command("backbones", "list the backbones, their feature size, input size and whether their "
                             "weights are on disk; or one backbone's layers")
    p.add_argument("name", nargs="?", help="a backbone: with --layers, list its layers")
    p.add_argument("--layers", action="store_true",
                   help="list the backbone's modules, the names `extract --layer` takes, with the "
                        "shape of each one's output for one image")

    p = command("check", "read every image of a folder without extracting: list what extract would "
                         "skip and why, and images whose bytes repeat (across splits: leakage)")
    add_data(p)
    p.add_argument("--workers", type=int, default=default_of(Runtime, "workers"),
                   help="image-decoding processes (default: one per CPU core, at most 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command("extract", "run a frozen backbone over an image folder once; write its features to "
                           "HDF5 (again: only new and changed images; after an interruption: the rest)")
    add_data(p)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--weights", default=None,
                   help="state-dict file to load, or 'none' for random init (default: the "
                        "backbone's ImageNet weights, from the torch hub cache or downloaded)")
    p.add_argument("--pool", default="avg", choices=POOLS, help="pooling of the feature map (default avg)")
    p.add_argument("--layer", action="append", default=[], metavar="NAME",
                   help="features from this module inside the base instead of its output (`featx "
                        "backbones NAME --layers` lists them), pooled by --pool; repeat to join "
                        "several")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="the features' precision (default: bfloat16 on OpenVINO on a CPU that "
                        "computes it natively, AVX-512 BF16 or AMX; else float32; on a GPU its "
                        "mixed precision); float16 halves the file; int8 (CPU, OpenVINO): the "
                        "base quantized on 300 of the images, once")
    p.add_argument("--out", default=None,
                   help="a .h5 file, or a folder for the default name (default cache/)")
    p.add_argument("--force", action="store_true",
                   help="extract every image again, ignoring the cache and any interrupted run")
    add_runtime(p)
    add_engine(p)

    p = command("fit-head", "train a light classifier on cached features; write a model bundle")
    p.add_argument("cache", help="the .h5 file `featx extract` wrote")
    p.add_argument("--model", default=DEFAULT_HEAD, choices=list(HEADS), help=f"default {DEFAULT_HEAD}")
    p.add_argument("--param", "-p", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="a parameter of the head's classifier, e.g. -p C=0.5 or -p epochs=50; repeatable")
    p.add_argument("--val-split", type=float, default=VAL_SPLIT,
                   help=f"fraction of train held out for validation when the cache has no val split "
                        f"(default {VAL_SPLIT})")
    p.add_argument("--search", action=argparse.BooleanOptionalAction, default=None,
                   help="try the head's settings (logistic and svm: C over a wide log range, then "
                        "finer; knn: k; linear: weight decay; mlp: width, dropout, weight decay) "
                        "on validation, keep the best and fit it again on train+val (default: "
                        "logistic at any size in memory, its settings trained together; the "
                        "others where that costs seconds, caches of a few thousand images); -p "
                        "fixes a setting")
    p.add_argument("--seed", type=int, default=SEED, help="seeds that split")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="linear and mlp heads: also log each epoch and the confusion matrix for "
                        "TensorBoard to DIR (needs pip install 'featx[tensorboard]')")
    p.add_argument("--out", default=None, help="bundle folder (default: beside the cache)")
    p.add_argument("--max-memory", type=_size, default=MAX_MEMORY, metavar="SIZE",
                   help=f"features larger than this (e.g. 512M, 4G) are streamed from disk in "
                        f"blocks, not read whole: linear and mlp heads learn from them that way "
                        f"({STREAM_EPOCHS} epochs unless -p epochs=N), the others refuse (default "
                        f"{size_text(MAX_MEMORY)})")

    p = command("audit", "find suspected label errors (out-of-fold heads on the cached features), "
                         "near-duplicates and images in two splits (leaks); write them as a CSV")
    p.add_argument("cache", help="the .h5 file `featx extract` wrote")
    p.add_argument("--out", default=None, help="CSV path (default: beside the cache, NAME.audit.csv)")
    p.add_argument("--folds", type=int, default=FOLDS,
                   help=f"folds of the out-of-fold heads; each class needs as many images (default {FOLDS})")
    p.add_argument("--seed", type=int, default=SEED, help="seeds the folds")
    p.add_argument("--similarity", type=float, default=SIMILARITY,
                   help=f"the least similarity of two images' features (centred, and whitened where "
                        f"the cache has the images for it) reported as a pair (default {SIMILARITY})")
    p.add_argument("--force", action="store_true", help="replace an --out file that featx did not write")

    p = command("finetune", "fine-tune the top of the backbone together with a fitted head; write a "
                            "new bundle")
    add_data(p, folder="the image folder the head's cache was extracted from")
    p.add_argument("--from", dest="source", required=True, metavar="BUNDLE",
                   help="the bundle `featx fit-head` wrote (a logistic, linear or mlp head)")
    p.add_argument("--out", default=None, help="new bundle folder (default: BUNDLE.finetuned)")
    add_recipe(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log each epoch and the confusion matrix for TensorBoard to DIR "
                        "(needs pip install 'featx[tensorboard]')")
    add_runtime(p, speed=False, batch_size=False)

    p = command("score", "classify every image under a folder with a model bundle; write a CSV")
    add_data(p, "folder", "images to score, searched recursively, labelled where a subfolder is "
                          "named like a class")
    p.add_argument("--model", required=True, help="the bundle folder `featx fit-head` wrote")
    p.add_argument("--weights", default=None, help="backbone weights file, if not where the bundle says")
    p.add_argument("--out", default=None, help="CSV path (default cache/scores/FOLDER-BUNDLE.csv)")
    p.add_argument("--force", action="store_true",
                   help="replace an --out CSV (or the metrics and picture beside it) that featx did "
                        "not write")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="the features' precision (default: the one the bundle's head was fitted on)")
    add_runtime(p)
    add_engine(p)

    p = command("export", "a bundle as one ONNX model, uint8 images to class probabilities, for use "
                          "without featx or torch (onnxruntime, numpy and Pillow)")
    p.add_argument("bundle", help="the bundle folder `featx fit-head` or `featx finetune` wrote")
    p.add_argument("--out", default=None, help="the .onnx file (default BUNDLE.onnx, beside the bundle)")
    p.add_argument("--weights", default=None, help="backbone weights file, if not where the bundle says")
    p.add_argument("--force", action="store_true", help="replace an --out file that is no ONNX model "
                                                        "torch wrote")

    p = command("classify", "a sanity check of a backbone: every image under a folder through its "
                            "own ImageNet classifier; its top labels shown and written to a CSV")
    p.add_argument("folder", help="images to classify, searched recursively")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--weights", default=None,
                   help="state-dict file of the whole network (default: the backbone's ImageNet "
                        "weights, from the torch hub cache or downloaded)")
    p.add_argument("--top", type=int, default=TOP_LABELS,
                   help=f"ImageNet labels per image (default {TOP_LABELS})")
    p.add_argument("--out", default=None,
                   help="CSV path (default cache/classify/FOLDER-BACKBONE-HASH.csv)")
    p.add_argument("--force", action="store_true", help="replace an --out file that featx did not write")
    add_runtime(p, speed=False)

    p = command("info", "what a feature cache or a model bundle holds: counts per class and split, "
                        "backbone, weights, preprocessing, execution, versions, sizes, skipped "
                        "files; for a bundle its head, parameter counts and metrics")
    p.add_argument("path", help="a .h5 cache or a bundle folder")

    p = command("report", "write one self-contained HTML page about a bundle: metrics, confusion "
                          "matrix, curves, the search, validation images right and wrong, samples, "
                          "augmentation, the audit of its cache, a scored folder")
    p.add_argument("bundle", help="the bundle folder `featx fit-head` or `featx finetune` wrote")
    p.add_argument("--scores", default=None, metavar="CSV", help="a CSV `featx score` wrote, to include")
    p.add_argument("--audit", default=None, metavar="CSV",
                   help="a CSV `featx audit` wrote, to include (default: the one beside the bundle's "
                        "cache, where there is one)")
    p.add_argument("--data", default=None,
                   help="the image folder the bundle was fitted on, if not where its cache says")
    p.add_argument("--out", default=None, help="HTML path (default BUNDLE/report.html)")
    p.add_argument("--force", action="store_true", help="replace an --out file that featx did not write")

    p = command("demo", "extract, fit and score scikit-learn's digits offline with the default backbone")
    p.add_argument("--data", default="data/digits", help="where to write the digit images")
    p.add_argument("--cache", default="cache", help="where to write features, bundle and scores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


