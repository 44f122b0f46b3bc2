"""The command line: each command turns its arguments into one call of featx's Python API."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import re
import sys

from .backbones.identity import DTYPES

# Everything imported here is torch-free, so that `featx --help` starts at once; each command
# imports its own stage when it runs.
from .backbones.registry import DEFAULT_BACKBONE, TOP_LABELS, get_backbone, list_backbones
from .backbones.spec import POOLS
from .data.augmentation import AUGMENTATIONS
from .errors import ConfigError, FeatxError
from .finetuning.recipe import KEEP, Recipe
from .fitting.options import MAX_MEMORY, SEED, STREAM_EPOCHS, VAL_SPLIT
from .heads.registry import DEFAULT_HEAD, HEADS
from .runtime import BATCHES_PER_BLOCK, CPUS_PER_WORKER, DECODES, ENGINES, EXECUTIONS, RayEngine, Runtime
from .util.files import size_text
from .version import __version__

EXAMPLES = {
    "backbones": "featx backbones",
    "check": "featx check data/hymenoptera",
    "extract": "featx extract data/hymenoptera --backbone resnet50",
    "fit-head": "featx fit-head cache/hymenoptera-efficientnet_lite0-avg-0123456789.h5 --model mlp",
    "finetune": "featx finetune data/pets --from cache/pets-efficientnet_lite0-avg-0123456789.logistic",
    "score": "featx score new_photos/ --model cache/hymenoptera-efficientnet_lite0-avg-0123456789.logistic",
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


def _default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _runtime(p: argparse.ArgumentParser, speed: bool = True, batch_size: bool = True) -> None:
    """The ``Runtime`` options; ``speed``: also how the base runs and where JPEGs are decoded."""
    p.add_argument("--device", default=_default(Runtime, "device"),
                   help="auto (CUDA if available), cpu or cuda")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=_default(Runtime, "batch_size"),
                       help="images per forward pass (default 32 on the CPU, 256 on a GPU)")
    p.add_argument("--workers", type=int, default=_default(Runtime, "workers"),
                   help="image-decoding worker processes (default: one per CPU core, at most 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if speed:
        execution = _default(Runtime, "execution")
        p.add_argument("--execution", default=execution, choices=EXECUTIONS,
                       help=f"how the frozen base runs (default {execution}: on a CPU the exported "
                            f"graph on whichever of onnxruntime and openvino extracts fastest here, "
                            f"raced once on the first batches; on a GPU fold: torch with BatchNorm "
                            f"folded into the convolutions; eager: torch as it is; compile: "
                            f"torch.compile, a minute or more of compiling)")
        p.add_argument("--decode", default=_default(Runtime, "decode"), choices=DECODES,
                       help="where JPEGs are decoded: cpu (workers) or device (beside the model); "
                            "default auto: device on a GPU")


# RayEngine's fields as options: (type, metavar, help); each default is RayEngine's own.
_RAY_OPTIONS = {
    "address": (str, "ADDR", "the Ray cluster's address, e.g. ray://head:10001 or head:6379 "
                "(default: RAY_ADDRESS, or a cluster `ray start` began here, else a Ray of this "
                "run's own on this machine)"),
    "gpus_per_worker": (float, "N", "GPUs per actor (default: 1 where the cluster has GPUs)"),
    "cpus_per_worker": (float, "N", f"CPUs per actor: the model's threads on a CPU (default: 1 "
                        f"beside a GPU, else up to {CPUS_PER_WORKER})"),
    "block_size": (int, "N", f"images an actor is given at a time, the most a crash repeats "
                   f"(default: {BATCHES_PER_BLOCK} batches)"),
    "blocks_in_flight": (int, "N", f"blocks queued at each actor (default "
                         f"{_default(RayEngine, 'blocks_in_flight')})"),
}


def _engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: this machine; ray: a pool of actors on a Ray cluster, which "
                        "writes the same cache (needs pip install 'featx[ray]'); --workers is "
                        "then the number of actors (default: as many as the cluster has room for)")
    for name, (kind, metavar, text) in _RAY_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=_default(RayEngine, name),
                       metavar=metavar, help=f"with --engine ray: {text}")


def _engine_of(args: argparse.Namespace) -> str | RayEngine:
    given = {name: getattr(args, name) for name in _RAY_OPTIONS
             if getattr(args, name) != _default(RayEngine, name)}
    if args.engine == "local":
        if given:
            raise ConfigError(f"--{next(iter(given)).replace('_', '-')} is a setting of the Ray "
                              f"engine: add --engine ray, or leave it out")
        return "local"
    return RayEngine(**given)


def _runtime_of(args: argparse.Namespace) -> Runtime:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Runtime) if hasattr(args, f.name)}
    return Runtime(**given, progress=not args.no_progress)


# Recipe fields as options: (type, metavar, help); each default is Recipe's own.
_RECIPE_OPTIONS = {
    "unfreeze": (str, "top:N|all|none|auto", "top:N (the last N blocks of the base), all, none, or "
                 "auto: the backbone's default, else the top third of its blocks"),
    "epochs": (int, "N", "at most this many epochs"),
    "patience": (int, "N", "stop after this many epochs without a better val accuracy"),
    "batch_size": (int, "N", "images per training step"),
    "lr": (float, "RATE", "AdamW peak learning rate"),
    "lr_decay": (float, "F", "each lower block learns at this times the rate of the one above "
                 "(1: all alike)"),
    "weight_decay": (float, "F", "AdamW weight decay"),
    "warmup": (float, "EPOCHS", "epochs of linear warm-up before the cosine decay"),
    "clip": (float, "NORM", "clip the gradient norm to this (0: no clipping)"),
    "seed": (int, "N", "seeds shuffling, augmentation and dropout"),
}


def _recipe(p: argparse.ArgumentParser) -> None:
    for name, (kind, metavar, text) in _RECIPE_OPTIONS.items():
        default = _default(Recipe, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, metavar=metavar,
                       help=f"{text} (default {default})")
    p.add_argument("--train-bn", action="store_true",
                   help="let BatchNorm re-estimate its statistics (default: kept frozen)")
    p.add_argument("--augment", default=",".join(_default(Recipe, "augment")), metavar="LIST",
                   help=f"comma-separated, from {', '.join(AUGMENTATIONS)}, or none (default: all)")
    p.add_argument("--no-mix", dest="mix", action="store_false",
                   help="keep the best epoch's weights as they are, without trying them mixed with "
                        "the head's (WiSE-FT)")
    p.add_argument("--keep", default=_default(Recipe, "keep"), choices=KEEP,
                   help="auto: the fine-tuned model only where its gain over the head on val is "
                        "larger than the val images can resolve (95%% interval above zero), else "
                        "the head; finetuned: the fine-tuned model whatever the gain (default "
                        "%(default)s)")


def _recipe_of(args: argparse.Namespace) -> Recipe:
    augment = () if args.augment == "none" else tuple(filter(None, args.augment.split(",")))
    return Recipe(**{name: getattr(args, name) for name in _RECIPE_OPTIONS},
                  train_bn=args.train_bn, augment=augment, mix=args.mix, keep=args.keep)


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
    p.add_argument("data", help="folder with one subfolder per class (optionally inside train/ val/ test/)")
    p.add_argument("--workers", type=int, default=_default(Runtime, "workers"),
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
    p.add_argument("--layer", action="append", default=[], metavar="NAME",
                   help="features from this module inside the base instead of its output (`featx "
                        "backbones NAME --layers` lists them), pooled by --pool; repeat to join "
                        "several")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="the features' precision (default: float32 on a CPU, the GPU's mixed "
                        "precision on a GPU); float16 halves the file; bfloat16 on a CPU needs "
                        "native bfloat16 (AVX-512 BF16 or AMX) and OpenVINO")
    p.add_argument("--out", default=None,
                   help="a .h5 file, or a folder for the default name (default cache/)")
    p.add_argument("--force", action="store_true",
                   help="extract every image again, ignoring the cache and any interrupted run")
    _runtime(p)
    _engine(p)

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
                        "where that costs seconds, caches of a few thousand images); -p fixes a "
                        "setting")
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

    p = command("finetune", "fine-tune the top of the backbone together with a fitted head; write a "
                            "new bundle")
    p.add_argument("data", help="the image folder the head's cache was extracted from")
    p.add_argument("--from", dest="source", required=True, metavar="BUNDLE",
                   help="the bundle `featx fit-head` wrote (a logistic, linear or mlp head)")
    p.add_argument("--out", default=None, help="new bundle folder (default: BUNDLE.finetuned)")
    _recipe(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log each epoch and the confusion matrix for TensorBoard to DIR "
                        "(needs pip install 'featx[tensorboard]')")
    _runtime(p, speed=False, batch_size=False)

    p = command("score", "classify every image under a folder with a model bundle; write a CSV")
    p.add_argument("folder", help="images to score, searched recursively")
    p.add_argument("--model", required=True, help="the bundle folder `featx fit-head` wrote")
    p.add_argument("--weights", default=None, help="backbone weights file, if not where the bundle says")
    p.add_argument("--out", default=None, help="CSV path (default cache/scores/FOLDER-BUNDLE.csv)")
    _runtime(p)
    _engine(p)

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
    _runtime(p, speed=False)

    p = command("info", "what a feature cache or a model bundle holds: counts per class and split, "
                        "backbone, weights, preprocessing, execution, versions, sizes, skipped "
                        "files; for a bundle its head, parameter counts and metrics")
    p.add_argument("path", help="a .h5 cache or a bundle folder")

    p = command("report", "write one self-contained HTML page about a bundle: metrics, confusion "
                          "matrix, curves, the search, validation images right and wrong, samples, "
                          "augmentation, a scored folder")
    p.add_argument("bundle", help="the bundle folder `featx fit-head` or `featx finetune` wrote")
    p.add_argument("--scores", default=None, metavar="CSV", help="a CSV `featx score` wrote, to include")
    p.add_argument("--data", default=None,
                   help="the image folder the bundle was fitted on, if not where its cache says")
    p.add_argument("--out", default=None, help="HTML path (default BUNDLE/report.html)")

    p = command("demo", "extract, fit and score scikit-learn's digits offline with the default backbone")
    p.add_argument("--data", default="data/digits", help="where to write the digit images")
    p.add_argument("--cache", default="cache", help="where to write features, bundle and scores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _backbones(name: str | None, layers: bool) -> None:
    from .backbones import timm_zoo
    from .backbones.shapes import feature_dim
    from .backbones.weights import is_on_disk

    if layers or name:
        if not layers:
            raise ConfigError(f"`featx backbones {name}` lists one backbone's layers: add --layers")
        from .backbones.extractor import backbone_layers

        print(f"{'layer':40s} {'module':24s} output for one image")
        for layer, kind, shape in backbone_layers(name or DEFAULT_BACKBONE):
            print(f"{layer:40s} {kind:24s} {'x'.join(map(str, shape)) if shape else '-'}")
        return
    if not timm_zoo.available():
        print(f"# {len(timm_zoo.MODELS)} more from timm ({', '.join(timm_zoo.MODELS)}): {timm_zoo.INSTALL}")
    names = list_backbones()
    width = max(map(len, names))
    print(f"{'name':{width}s} {'dim':>5s} {'input':>5s} {'resize':>6s} {'interpolation':13s} "
          f"{'weights':9s} source")
    for name in names:
        spec = get_backbone(name)
        p = spec.preprocessing
        print(f"{name:{width}s} {feature_dim(spec):5d} {p.crop_size:5d} {p.resize_size:6d} "
              f"{p.interpolation:13s} {'on disk' if is_on_disk(spec) else 'download':9s} {spec.source}")


# Each command imports only its own stage when it runs, so one command never pays for another's
# imports, and `featx --help` for none.
def _say(args: argparse.Namespace, text: str) -> None:
    print(in_flags(text, args.parser))


def _check(args: argparse.Namespace) -> None:
    from .data.check import check

    _say(args, check(args.data, workers=args.workers, progress=not args.no_progress).summary())


def _extract(args: argparse.Namespace) -> None:
    from .extraction.extract import extract

    r = extract(args.data, backbone=args.backbone, weights=args.weights, pool=args.pool,
                out=args.out, dtype=args.dtype, force=args.force, runtime=_runtime_of(args),
                layers=tuple(args.layer), engine=_engine_of(args))
    for path, err in r.failed:
        print(f"skipped {path}: {err}")
    _say(args, r.summary())


def _fit_head(args: argparse.Namespace) -> None:
    from .fitting.fit import fit_head

    _say(args, fit_head(args.cache, model=args.model, params=dict(args.param), val_split=args.val_split,
                   seed=args.seed, out=args.out, max_memory=args.max_memory,
                   search=args.search, tensorboard=args.tensorboard).summary())


def _finetune(args: argparse.Namespace) -> None:
    from .finetuning.run import finetune

    _say(args, finetune(args.data, args.source, out=args.out, recipe=_recipe_of(args),
                   resume=args.resume, runtime=_runtime_of(args),
                   tensorboard=args.tensorboard).summary())


def _score(args: argparse.Namespace) -> None:
    from .scoring.score import score

    _say(args, score(args.folder, args.model, out=args.out, weights=args.weights,
                runtime=_runtime_of(args), engine=_engine_of(args)).summary())


def _classify(args: argparse.Namespace) -> None:
    from .scoring.classify import classify

    _say(args, classify(args.folder, backbone=args.backbone, weights=args.weights, top=args.top,
                   out=args.out, runtime=_runtime_of(args)).summary())


def _info(args: argparse.Namespace) -> None:
    from .reporting.info import info

    _say(args, info(args.path).summary())


def _report(args: argparse.Namespace) -> None:
    from .reporting.report import report

    _say(args, report(args.bundle, scores=args.scores, data=args.data, out=args.out).summary())


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    _say(args, run_demo(args.data, args.cache, progress=not args.no_progress).summary())


COMMANDS = {"backbones": lambda args: _backbones(args.name, args.layers), "check": _check,
            "extract": _extract, "fit-head": _fit_head, "finetune": _finetune, "score": _score,
            "classify": _classify, "info": _info, "report": _report, "demo": _demo}

# Library parameters the command line names otherwise: the parameter -> its options' dests.
_DESTS = {"bundle": ("source", "model"), "layers": ("layer",), "params": ("param",)}
_PARAMETER = re.compile(r"`([a-z_]+)(=True|=False)?`")


def in_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command line's words: each `parameter` it names (featx's errors
    name what to change as the Python API calls it), `parameter=True` and `parameter=False` become
    the option of ``parser`` that sets it; a name that is no option here is left as it is."""
    options = {a.dest: a.option_strings for a in parser._actions if a.option_strings}

    def flag(m: re.Match) -> str:
        name, value = m.groups()
        dest = next((d for d in (name, *_DESTS.get(name, ())) if d in options), None)
        if dest is None:
            return m.group(0)
        strings = options[dest]
        return strings[1] if value == "=False" and len(strings) > 1 else strings[0]

    return _PARAMETER.sub(flag, message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("featx: %(message)s"))
    logger = logging.getLogger("featx")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args.func(args)
    except FeatxError as e:
        print(f"featx: error: {in_flags(str(e), args.parser)}", file=sys.stderr)
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
