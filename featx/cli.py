"""The command line: each command turns its arguments into one call of featx's Python API."""

from __future__ import annotations

import argparse
import ast
import logging
import sys

EXAMPLES = {
    "backbones": "featx backbones",
    "check": "featx check data/hymenoptera",
    "extract": "featx extract data/hymenoptera --backbone resnet50",
    "fit-head": "featx fit-head cache/hymenoptera-efficientnet_lite0-avg-0123456789.h5 --model mlp",
    "finetune": "featx finetune data/pets --from cache/pets-efficientnet_lite0-avg-0123456789.logistic",
    "score": "featx score new_photos/ --model cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
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


def _runtime(p: argparse.ArgumentParser, batch_size: int | None = 32) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"images per forward pass (default {batch_size or '32 on the CPU, 256 on a GPU'})")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: one per CPU core, at most 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _speed(p: argparse.ArgumentParser) -> None:
    from .execution import DEFAULT_EXECUTION, EXECUTIONS
    from .extraction import DECODES

    p.add_argument("--execution", default=DEFAULT_EXECUTION, choices=EXECUTIONS,
                   help=f"how the frozen base runs (default {DEFAULT_EXECUTION}: BatchNorm folded into "
                        f"the convolutions, checked against eager; compile: torch.compile, which pays "
                        f"a minute or more of compiling)")
    p.add_argument("--decode", default="auto", choices=DECODES,
                   help="where JPEGs are decoded: cpu (workers) or device (beside the model); "
                        "default auto: device on a GPU")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .augmentation import AUGMENTATIONS
    from .backbones import DEFAULT_BACKBONE, POOLS
    from .cache import DTYPES
    from .heads import HEADS
    from .training import MAX_MEMORY, STREAM_EPOCHS, size_text

    parser = argparse.ArgumentParser(
        prog="featx", description="Transfer learning on cached features of a frozen pretrained CNN.")
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=f"example: {EXAMPLES[name]}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    command("backbones", "list the backbones, their feature size, input size and whether their "
                         "weights are on disk")

    p = command("check", "read every image of a folder without extracting: list what extract would "
                         "skip and why, and images whose bytes repeat (across splits: leakage)")
    p.add_argument("data", help="folder with one subfolder per class (optionally inside train/ val/ test/)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes (default: one per CPU core, at most 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command("extract", "run a frozen backbone over an image folder once; write its features to "
                           "HDF5 (again: only new and changed images; after an interruption: the rest)")
    p.add_argument("data", help="folder with one subfolder per class (optionally inside train/ val/ test/)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--weights", default=None,
                   help="state-dict file to load, or 'none' for random init (default: the "
                        "backbone's ImageNet weights, from the torch hub cache or downloaded)")
    p.add_argument("--pool", default="avg", choices=POOLS, help="pooling of the feature map (default avg)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="stored feature type")
    p.add_argument("--out", default=None,
                   help="a .h5 file, or a folder for the default name (default cache/)")
    p.add_argument("--force", action="store_true",
                   help="extract every image again, ignoring the cache and any interrupted run")
    _runtime(p, batch_size=None)
    _speed(p)

    p = command("fit-head", "train a light classifier on cached features; write a model bundle")
    p.add_argument("cache", help="the .h5 file `featx extract` wrote")
    p.add_argument("--model", default="logistic", choices=list(HEADS), help="default logistic")
    p.add_argument("--param", "-p", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="a parameter of the head's classifier, e.g. -p C=0.5 or -p epochs=50; repeatable")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of train held out for validation when the cache has no val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="bundle folder (default: beside the cache)")
    p.add_argument("--max-memory", type=_size, default=MAX_MEMORY, metavar="SIZE",
                   help=f"features larger than this (e.g. 512M, 4G) are streamed from disk in "
                        f"blocks, not read whole: linear and mlp heads learn from them that way "
                        f"({STREAM_EPOCHS} epochs unless -p epochs=N), the others refuse (default "
                        f"{size_text(MAX_MEMORY)})")

    p = command("finetune", "fine-tune the top of the backbone together with a fitted head; write a "
                            "new bundle")
    p.add_argument("data", help="the image folder the head's cache was extracted from")
    p.add_argument("--from", dest="source", required=True, metavar="BUNDLE",
                   help="the bundle `featx fit-head` wrote (a logistic, linear or mlp head)")
    p.add_argument("--out", default=None, help="new bundle folder (default: BUNDLE.finetuned)")
    p.add_argument("--unfreeze", default="auto", metavar="top:N|all|none|auto",
                   help="top:N (the last N blocks of the base), all, none, or auto: the backbone's "
                        "default, the top third of its blocks (default auto)")
    p.add_argument("--train-bn", action="store_true",
                   help="let BatchNorm re-estimate its statistics (default: kept frozen)")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="at most this many epochs (default 10)")
    p.add_argument("--patience", type=int, default=3, metavar="N",
                   help="stop after this many epochs without a better val accuracy (default 3)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate (default 1e-4)")
    p.add_argument("--lr-decay", type=float, default=1.0, metavar="F",
                   help="each lower block learns at this times the rate of the one above (default 1: "
                        "all alike)")
    p.add_argument("--weight-decay", type=float, default=0.01, metavar="F",
                   help="AdamW weight decay (default 0.01)")
    p.add_argument("--warmup", type=float, default=1.0, metavar="EPOCHS",
                   help="epochs of linear warm-up before the cosine decay (default 1)")
    p.add_argument("--clip", type=float, default=1.0, metavar="NORM",
                   help="clip the gradient norm to this (default 1; 0: no clipping)")
    p.add_argument("--augment", default=",".join(AUGMENTATIONS), metavar="LIST",
                   help=f"comma-separated, from {', '.join(AUGMENTATIONS)}, or none "
                        f"(default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune")
    _runtime(p)

    p = command("score", "classify every image under a folder with a model bundle; write a CSV")
    p.add_argument("folder", help="images to score, searched recursively")
    p.add_argument("--model", required=True, help="the bundle folder `featx fit-head` wrote")
    p.add_argument("--weights", default=None, help="backbone weights file, if not where the bundle says")
    p.add_argument("--out", default=None, help="CSV path (default cache/scores/FOLDER-BUNDLE.csv)")
    _runtime(p, batch_size=None)
    _speed(p)

    p = command("demo", "extract, fit and score scikit-learn's digits offline with the default backbone")
    p.add_argument("--data", default="data/digits", help="where to write the digit images")
    p.add_argument("--cache", default="cache", help="where to write features, bundle and scores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _backbones() -> None:
    from .backbones import get_backbone, list_backbones
    from .weights import is_on_disk

    print(f"{'name':22s} {'dim':>5s} {'input':>5s}  {'weights':9s} source")
    for name in list_backbones():
        spec = get_backbone(name)
        print(f"{name:22s} {spec.feature_dim():5d} {spec.preprocessing.crop_size:5d}  "
              f"{'on disk' if is_on_disk(spec) else 'download':9s} {spec.source}")


def run(args: argparse.Namespace) -> None:
    import featx

    if args.command == "backbones":
        _backbones()
    elif args.command == "check":
        print(featx.check(args.data, workers=args.workers, progress=not args.no_progress).summary())
    elif args.command == "extract":
        r = featx.extract(args.data, backbone=args.backbone, weights=args.weights, pool=args.pool,
                          out=args.out, dtype=args.dtype, device=args.device,
                          batch_size=args.batch_size, workers=args.workers,
                          progress=not args.no_progress, force=args.force,
                          execution=args.execution, decode=args.decode)
        for path, err in r.failed:
            print(f"skipped {path}: {err}")
        print(r.summary())
    elif args.command == "fit-head":
        r = featx.fit_head(args.cache, model=args.model, params=dict(args.param),
                           val_split=args.val_split, seed=args.seed, out=args.out,
                           max_memory=args.max_memory)
        print(r.summary())
    elif args.command == "finetune":
        augment = () if args.augment == "none" else tuple(filter(None, args.augment.split(",")))
        r = featx.finetune(args.data, args.source, out=args.out, unfreeze=args.unfreeze,
                           train_bn=args.train_bn, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, lr_decay=args.lr_decay, weight_decay=args.weight_decay,
                           warmup=args.warmup, clip=args.clip, augment=augment,
                           patience=args.patience, seed=args.seed, resume=args.resume,
                           device=args.device, workers=args.workers, progress=not args.no_progress)
        print(r.summary())
    elif args.command == "score":
        r = featx.score(args.folder, args.model, out=args.out, weights=args.weights,
                        device=args.device, batch_size=args.batch_size, workers=args.workers,
                        progress=not args.no_progress, execution=args.execution, decode=args.decode)
        print(r.summary())
    elif args.command == "demo":
        r = featx.run_demo(args.data, args.cache, progress=not args.no_progress)
        print(r.extract.summary())
        print(r.fit.summary())
        print(r.score.summary().splitlines()[0])
        print(f"demo: digits test accuracy {r.score.accuracy:.4f} "
              f"(validation {r.fit.metrics['val']['accuracy']:.4f})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("featx: %(message)s"))
    logger = logging.getLogger("featx")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    from .errors import FeatxError

    try:
        run(args)
    except FeatxError as e:
        print(f"featx: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `featx backbones | head`
        sys.stderr.close()
        return 0
    finally:  # a second call in the same process must not log to this call's stderr
        logger.removeHandler(handler)
    return 0
