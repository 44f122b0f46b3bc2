"""The commands: each turns its arguments into one call of featx's Python API and prints the
result (``text``), in the command line's words (``in_flags``). Each imports its own stage when it
runs, so one command never pays for another's imports, and `featx --help` for none."""

from __future__ import annotations

import argparse
import re

from ..backbones.registry import DEFAULT_BACKBONE, get_backbone, list_backbones
from ..errors import ConfigError
from . import text
from .options import engine_of, recipe_of, runtime_of


def _backbones(name: str | None, layers: bool) -> None:
    from ..backbones import timm_zoo
    from ..backbones.shapes import feature_dim
    from ..backbones.weights import is_on_disk

    if layers or name:
        if not layers:
            raise ConfigError(f"`featx backbones {name}` lists one backbone's layers: add --layers")
        from ..backbones.extractor import backbone_layers

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
    from ..data.check import check

    _say(args, text.checked(check(args.data, labels=args.labels, workers=args.workers,
                                  progress=not args.no_progress)))


def _extract(args: argparse.Namespace) -> None:
    from ..extraction.extract import extract

    r = extract(args.data, labels=args.labels, backbone=args.backbone, weights=args.weights,
                pool=args.pool, out=args.out, dtype=args.dtype, force=args.force, runtime=runtime_of(args),
                layers=tuple(args.layer), engine=engine_of(args))
    for line in text.skips(r):
        print(line)
    _say(args, text.extracted(r))


def _fit_head(args: argparse.Namespace) -> None:
    from ..reporting.painter import ahead

    with ahead():  # matplotlib imported for the pictures beside the imports and the search below
        from ..fitting.fit import fit_head

        r = fit_head(args.cache, model=args.model, params=dict(args.param), val_split=args.val_split,
                     seed=args.seed, out=args.out, max_memory=args.max_memory, search=args.search,
                     tensorboard=args.tensorboard)
    _say(args, text.fitted(r))


def _audit(args: argparse.Namespace) -> None:
    from ..auditing.audit import audit

    r = audit(args.cache, out=args.out, folds=args.folds, seed=args.seed, similarity=args.similarity,
              force=args.force)
    _say(args, text.audited(r))


def _finetune(args: argparse.Namespace) -> None:
    from ..finetuning.run import finetune

    r = finetune(args.data, args.source, labels=args.labels, out=args.out, recipe=recipe_of(args),
                 resume=args.resume, runtime=runtime_of(args), tensorboard=args.tensorboard)
    _say(args, text.finetuned(r))


def _score(args: argparse.Namespace) -> None:
    from ..scoring.score import score

    r = score(args.folder, args.model, labels=args.labels, out=args.out, weights=args.weights,
              runtime=runtime_of(args), engine=engine_of(args), dtype=args.dtype, force=args.force)
    _say(args, text.scored(r))


def _export(args: argparse.Namespace) -> None:
    from ..scoring.export import export

    _say(args, text.exported(export(args.bundle, out=args.out, weights=args.weights, force=args.force)))


def _classify(args: argparse.Namespace) -> None:
    from ..scoring.classify import classify

    r = classify(args.folder, backbone=args.backbone, weights=args.weights, top=args.top, out=args.out,
                 runtime=runtime_of(args), force=args.force)
    _say(args, text.classified(r))


def _info(args: argparse.Namespace) -> None:
    from ..reporting.info import info

    _say(args, text.described(info(args.path)))


def _report(args: argparse.Namespace) -> None:
    from ..reporting.report import report

    _say(args, text.reported(report(args.bundle, scores=args.scores, data=args.data, out=args.out,
                                    force=args.force, audit=args.audit)))


def _demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    _say(args, text.demonstrated(run_demo(args.data, args.cache, progress=not args.no_progress)))


COMMANDS = {"backbones": lambda args: _backbones(args.name, args.layers), "check": _check,
            "extract": _extract, "fit-head": _fit_head, "audit": _audit, "finetune": _finetune,
            "score": _score, "export": _export, "classify": _classify, "info": _info, "report": _report,
            "demo": _demo}

# Library parameters the command line names otherwise: the parameter -> its options' dests.
_DESTS = {"bundle": ("source", "model"), "layers": ("layer",), "params": ("param",)}
_PARAMETER = re.compile(r"`([a-z_]+)(?:=([^`\s]+))?`")


def in_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command line's words: each `parameter` it names (featx's errors
    name what to change as the Python API calls it) becomes the option of ``parser`` that sets
    it, `parameter=True` that option, `parameter=False` its --no- form, `parameter=VALUE` the
    option and its value; a name that is no option here is left as it is."""
    options = {a.dest: a.option_strings for a in parser._actions if a.option_strings}

    def flag(m: re.Match) -> str:
        name, value = m.groups()
        dest = next((d for d in (name, *_DESTS.get(name, ())) if d in options), None)
        if dest is None:
            return m.group(0)
        strings = options[dest]
        if value == "False" and len(strings) > 1:
            return strings[1]
        return strings[0] if value in (None, "True", "False") else f"{strings[0]} {value}"

    return _PARAMETER.sub(flag, message)


