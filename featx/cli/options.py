"""How the library's settings objects (``Runtime``, ``RayEngine``, ``Recipe``) become options,
and options become them again: each default read from the dataclass that writes it."""

from __future__ import annotations

import argparse
import dataclasses

from ..data.augmentation import AUGMENTATIONS
from ..errors import ConfigError
from ..finetuning.recipe import KEEP, Recipe
from ..runtime import BATCHES_PER_BLOCK, CPUS_PER_WORKER, DECODES, ENGINES, EXECUTIONS, RayEngine, Runtime


def default_of(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def add_runtime(p: argparse.ArgumentParser, speed: bool = True, batch_size: bool = True) -> None:
    """The ``Runtime`` options; ``speed``: also how the base runs and where JPEGs are decoded."""
    p.add_argument("--device", default=default_of(Runtime, "device"),
                   help="auto (CUDA if available), cpu or cuda")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=default_of(Runtime, "batch_size"),
                       help="images per forward pass (default 32 on the CPU, 256 on a GPU)")
    p.add_argument("--workers", type=int, default=default_of(Runtime, "workers"),
                   help="image-decoding worker processes (default: one per CPU core, at most 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if speed:
        execution = default_of(Runtime, "execution")
        p.add_argument("--execution", default=execution, choices=EXECUTIONS,
                       help=f"how the frozen base runs (default {execution}: on a CPU the exported "
                            f"graph on whichever of onnxruntime and openvino extracts fastest here, "
                            f"raced once on the first batches; on a GPU fold: torch with BatchNorm "
                            f"folded into the convolutions; eager: torch as it is; compile: "
                            f"torch.compile, a minute or more of compiling)")
        p.add_argument("--decode", default=default_of(Runtime, "decode"), choices=DECODES,
                       help="where JPEGs are decoded: cpu (workers) or device (beside the model); "
                            "default auto: device on a GPU")


FOLDERS = "folder with one subfolder per class (optionally inside train/ val/ test/)"


def add_data(p: argparse.ArgumentParser, dest: str = "data", folder: str = FOLDERS) -> None:
    """The image folder, and the manifest that may label it instead of its subfolders."""
    p.add_argument(dest, help=f"{folder}; with --labels, the folder its paths are in")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="a CSV or JSONL manifest: each image's path (relative to the folder, or "
                        "absolute inside it; an id without extension is found by its stem), label "
                        "and optional split (train, val, test), columns found by their usual names "
                        "or named as FILE:path=COL,label=COL,split=COL; rows that cannot be used are "
                        "skipped and recorded, as unreadable images are")


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
                         f"{default_of(RayEngine, 'blocks_in_flight')})"),
}


def add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: this machine; ray: a pool of actors on a Ray cluster, which "
                        "writes the same cache (needs pip install 'featx[ray]'); --workers is "
                        "then the number of actors (default: as many as the cluster has room for)")
    for name, (kind, metavar, text) in _RAY_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default_of(RayEngine, name),
                       metavar=metavar, help=f"with --engine ray: {text}")


def engine_of(args: argparse.Namespace) -> str | RayEngine:
    given = {name: getattr(args, name) for name in _RAY_OPTIONS
             if getattr(args, name) != default_of(RayEngine, name)}
    if args.engine == "local":
        if given:
            raise ConfigError(f"--{next(iter(given)).replace('_', '-')} is a setting of the Ray "
                              f"engine: add --engine ray, or leave it out")
        return "local"
    return RayEngine(**given)


def runtime_of(args: argparse.Namespace) -> Runtime:
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


def add_recipe(p: argparse.ArgumentParser) -> None:
    for name, (kind, metavar, text) in _RECIPE_OPTIONS.items():
        default = default_of(Recipe, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, metavar=metavar,
                       help=f"{text} (default {default})")
    p.add_argument("--train-bn", action="store_true",
                   help="let BatchNorm re-estimate its statistics (default: kept frozen)")
    p.add_argument("--augment", default=",".join(default_of(Recipe, "augment")), metavar="LIST",
                   help=f"comma-separated, from {', '.join(AUGMENTATIONS)}, or none (default: all)")
    p.add_argument("--no-mix", dest="mix", action="store_false",
                   help="keep the best epoch's weights as they are, without trying them mixed with "
                        "the head's (WiSE-FT)")
    p.add_argument("--keep", default=default_of(Recipe, "keep"), choices=KEEP,
                   help="auto: the fine-tuned model only where its gain over the head on val is "
                        "larger than the val images can resolve (95%% interval above zero), else "
                        "the head; finetuned: the fine-tuned model whatever the gain (default "
                        "%(default)s)")


def recipe_of(args: argparse.Namespace) -> Recipe:
    augment = () if args.augment == "none" else tuple(filter(None, args.augment.split(",")))
    return Recipe(**{name: getattr(args, name) for name in _RECIPE_OPTIONS},
                  train_bn=args.train_bn, augment=augment, mix=args.mix, keep=args.keep)
