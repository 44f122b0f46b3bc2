"""What each command prints: the library's results as text for a terminal, one function each, and
``summary`` for any of them. Results are read by their attributes alone, so this module imports
no stage (and no torch) until a command has run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..data.folders import SPLITS, UNSPLIT
from ..util.files import metrics_path

if TYPE_CHECKING:
    from ..auditing.audit import AuditResult
    from ..data.check import CheckReport
    from ..data.folders import Sample
    from ..demo import DemoResult
    from ..extraction.update import ExtractResult
    from ..finetuning.run import FinetuneResult
    from ..fitting.fit import FitResult
    from ..fitting.search import SearchResult
    from ..reporting.info import Info
    from ..reporting.report import ReportResult
    from ..scoring.classify import ClassifyResult
    from ..scoring.export import ExportResult
    from ..scoring.score import ScoreResult

# Lines of images ``classified`` shows; the CSV has every one.
SHOWN = 50
# Findings of each kind ``audited`` shows, so that its summary fits a screen at any size.
FINDINGS_SHOWN = 5
# What a terminal acts on rather than shows: a newline that starts a line of its own, \r that
# writes over one, ESC that starts a colour or cursor sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def plain(text) -> str:
    """Text from a file (a file name, a class, an attribute, an error about either) as one
    line shows it: each control character escaped, as Python writes it (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def metrics_line(split: str, m: dict) -> str:
    """One line of a split's metrics, as every command prints them (a bundle of an earlier featx
    has only n, accuracy and loss)."""
    ci = "(95% CI {:.3f}-{:.3f})  ".format(*m["accuracy_ci95"]) if "accuracy_ci95" in m else ""
    top = next((k for k in m if re.fullmatch(r"top\d+_accuracy", k)), None)
    extra = "".join(f"  {label}={m[key]:.4f}" for key, label in
                    (("balanced_accuracy", "balanced"), ("loss", "loss"),
                     (top, top and top.removesuffix("_accuracy")), ("roc_auc", "auc")) if key in m)
    return f"{plain(split):9s} n={m['n']:<6d} accuracy={m['accuracy']:.4f} {ci}{extra.lstrip()}"


def skipped(path, why) -> str:
    """The line of an image that could not be read."""
    return f"skipped {plain(path)}: {plain(why)}"


def extracted(r: ExtractResult) -> str:
    precision = f"precision: {r.dtype} ({r.why_dtype})"
    skips = f"{r.n_failed} skipped" + (f", {r.n_refused} manifest rows not used" if r.n_refused else "")
    if r.up_to_date:
        return f"up to date: {plain(r.path)} ({r.n_images} images, {skips}); {precision}"
    reused = f", reused {r.n_reused}" if r.n_reused else ""
    rate = f", {r.images_per_second:.1f} img/s on {r.execution}" if r.n_extracted else ""
    return (f"extracted {r.n_extracted} images{reused} ({skips}) in "
            f"{r.seconds:.1f} s{rate} -> {plain(r.path)}\n{precision}")


def search_table(found: SearchResult) -> str:
    """The settings a search tried, with their validation figures, the chosen one marked."""
    names = list(found.trials[0].params)
    lines = [" ".join(f"{n:>12s}" for n in names) + f" {'val acc':>8s} {'val loss':>8s} {'s':>6s}"]
    for t in found.trials:
        mark = "  <- chosen" if t is found.best else ""
        lines.append(" ".join(f"{t.params[n]:>12g}" for n in names) +
                     f" {t.metrics['accuracy']:8.4f} {t.metrics['loss']:8.4f} {t.seconds:6.1f}{mark}")
    return "\n".join(lines)


def fitted(r: FitResult) -> str:
    lines = [search_table(r.search)] if r.search else []
    lines += [metrics_line(split, m) for split, m in r.metrics.items()]
    if r.search:
        chosen = ", ".join(f"{k}={v:g}" for k, v in r.search.best.params.items())
        lines.append(f"chosen on val: {chosen}; " + (
            "then fitted on train+val (val figures are the chosen setting's, fitted on train alone)"
            if "train+val" in r.metrics else "kept as the search trained it, on train alone"))
    return "\n".join([*lines, f"fitted in {r.seconds:.1f} s -> {plain(r.bundle)}"])


def _cell(v, fmt: str) -> str:
    return format(v, fmt) if v is not None else format("-", f">{fmt.split('.')[0]}")


def _verdict(r: FinetuneResult) -> list[str]:
    v = r.verdict
    mix = f", mixed {v.alpha:g} of the way from the head" if v.alpha < 1 else ""
    lines = [f"val accuracy: head {v.before:.4f} -> fine-tuned {v.after:.4f} (epoch {v.epoch}{mix}; "
             f"{r.unfreeze} unfrozen, {r.trainable:,} of {r.trainable + r.frozen:,} parameters)"]
    gain = (f"gain {100 * v.gain:+.2f} points on {v.n} val images (95% CI {100 * v.low:+.2f} to "
            f"{100 * v.high:+.2f}; {v.wins} images newly right, {v.losses} newly wrong)")
    if v.kept == "finetuned":
        lines.append(f"{gain}: keeping the fine-tuned model" + (
            "" if v.low > 0 else ", as `keep=finetuned` asks, though the gain is not resolved"))
    elif v.high < 0:
        lines.append(f"{gain}: the fine-tuned model is worse, so the bundle keeps the head as "
                     f"fit-head wrote it")
    else:
        lines.append(f"{gain}: not more than {v.n} images can tell from chance, so the bundle keeps "
                     f"the head as fit-head wrote it (`keep=finetuned` keeps the fine-tuned model)")
    return lines


def finetuned(r: FinetuneResult) -> str:
    lines = [f"{'epoch':>5s} {'lr':>8s} {'train loss':>10s} {'train acc':>9s} {'val loss':>8s} "
             f"{'val acc':>7s} {'seconds':>7s} {'img/s':>6s}"]
    lines += [f"{h.epoch:5d} {_cell(h.lr, '8.1e')} {_cell(h.train_loss, '10.4f')} "
              f"{_cell(h.train_accuracy, '9.4f')} {h.val_loss:8.4f} {h.val_accuracy:7.4f} "
              f"{h.seconds:7.1f} {_cell(h.images_per_second, '6.1f')}" for h in r.history]
    if len(r.mixing) > 2:
        lines.append("mixed with the head (WiSE-FT), val accuracy at each weight: " + ", ".join(
            f"{m.alpha:g} {m.val_accuracy:.4f}" for m in r.mixing))
    lines += _verdict(r)
    if "test" in r.metrics:
        lines.append(metrics_line("test", r.metrics["test"]))
    if r.verdict.kept == "head" and r.finetuned_test:
        lines.append(metrics_line("test", r.finetuned_test) + "  (the fine-tuned model, not kept)")
    return "\n".join([*lines, f"fine-tuned in {r.seconds:.0f} s -> {plain(r.bundle)}"])


def scored(r: ScoreResult) -> str:
    rate = (r.n_scored + r.n_failed) / r.seconds if r.seconds else 0.0
    lines = [f"scored {r.n_scored} images ({r.n_failed} skipped) in {r.seconds:.1f} s, "
             f"{rate:.1f} img/s -> {plain(r.csv)}",
             *([f"features: {extracted(r.features)}"] if r.features else []),
             "predicted: " + ", ".join(f"{plain(c)} {n}" for c, n in r.predicted.items())]
    if r.n_fitted:
        some = f"{r.n_fitted} of the {r.n_labelled}" if r.n_fitted < r.n_labelled else f"all {r.n_fitted}"
        lines.append(f"the head was fitted on {some} labelled images (known by their bytes; fit-head "
                     f"fits again on train+val after its search): their predictions are not held "
                     f"out; the held-out figure is fit-head's val line (featx info BUNDLE)")
        if r.held_out:
            lines.append(metrics_line("held-out", r.held_out))
        lines.append(metrics_line("all", r.metrics) + f"  (not held out) -> {plain(metrics_path(r.csv))}")
    elif r.metrics:
        lines.append(metrics_line("labelled", r.metrics) + f" -> {plain(metrics_path(r.csv))}")
    lines += _capped([skipped(path, err) for path, err in r.failed], SHOWN)
    return "\n".join(lines)


def _capped(lines: list[str], limit: int, rest: str = "in the CSV") -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... {len(lines) - limit} more {rest}"]


def audited(r: AuditResult, limit: int = FINDINGS_SHOWN) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in r.split_counts.items())
    lines = [f"audited {r.n_images} images in {len(r.classes)} classes ({counts}) in {r.seconds:.1f} s "
             f"-> {plain(r.csv)}",
             f"out of fold ({r.folds}-fold logistic heads, C={r.C:g}): {r.accuracy:.4f} right; "
             f"{len(r.labels)} suspected label errors" + (", the most suspicious first:" if r.labels else "")]
    lines += _capped([f"  {f.score:.3f}  {plain(f.path)}: given {plain(f.given)}, suggested "
                      f"{plain(f.suggested)}" for f in r.labels], limit)
    how = "whitened" if r.whitened else "centred"
    lines.append(f"alike (features {r.similarity:g} or more similar, {how}; or the same bytes): "
                 f"{len(r.leaks)} leaks across splits, {len(r.duplicates)} near-duplicates within one"
                 + (", the most similar first:" if r.leaks or r.duplicates else ""))
    for found, kind in ((r.leaks, "leaks"), (r.duplicates, "near-duplicates")):
        lines += _capped([f"  {f.kind:9s} {f.score:.3f}  {plain(f.path)} = {plain(f.other)}"
                          + (f"  ({plain(f.split)})" if f.kind == "leak" else "") for f in found],
                         limit, f"{kind} in the CSV")
    return "\n".join(lines)


def skips(r: ExtractResult, limit: int = SHOWN) -> list[str]:
    """The lines of what an extraction skipped, as many as a screen holds."""
    return _capped([skipped(path, why) for path, why in r.failed], limit,
                   f"(`featx info {plain(r.path)}` lists all)")


def exported(r: ExportResult) -> str:
    return (f"exported {len(r.classes)} classes in {r.seconds:.1f} s -> {plain(r.path)} (probabilities "
            f"within {r.difference:.1e} of the bundle's head on a fixed batch)")


def classified(r: ClassifyResult, limit: int = SHOWN) -> str:
    lines = _capped([f"{plain(path)}: " + ", ".join(f"{plain(label)} {p:.2f}" for label, p in top)
                     for path, top in r.rows], limit)
    lines += _capped([skipped(path, why) for path, why in r.failed], limit)
    # Last, so that it stays on screen below the per-image lines.
    lines.append(f"classified {len(r.rows)} images ({r.n_failed} skipped) with {r.backbone}'s "
                 f"ImageNet head in {r.seconds:.1f} s -> {plain(r.csv)}")
    return "\n".join(lines)


def _where(r: CheckReport, group: list[Sample]) -> str:
    splits = [s for s in SPLITS if s in {x.split for x in group}]
    labels = sorted({s.label for s in group})
    notes = ([f"{' and '.join(splits)}: leakage"] if len(splits) > 1 else []) + \
        ([f"labelled {' and '.join(plain(r.classes[i]) for i in labels)}"] if len(labels) > 1 else [])
    return f"  ({'; '.join(notes)})" if notes else ""


def checked(r: CheckReport) -> str:
    n = sum(r.split_counts.values())
    lines = [f"checked {n} images in {len(r.classes)} classes (" +
             ", ".join(f"{k} {v}" for k, v in r.split_counts.items()) + f") in {r.seconds:.1f} s"]
    if len(r.classes) == 1:
        lines.append(f"only one class, {plain(r.classes[0])}: fit-head needs two or more")
    for what, found in (("would be skipped", r.skipped), ("passed over", r.ignored)):
        if found:
            lines.append(f"{len(found)} {what}:")
            lines += [f"  {plain(path)}: {plain(why)}" for path, why in found]
    if r.duplicates:
        lines.append(f"duplicates, the same bytes under other names: {len(r.duplicates)} "
                     f"group(s), {len(r.leaks)} across splits:")
        lines += ["  " + " = ".join(plain(s.path.as_posix()) for s in g) + _where(r, g) for g in r.duplicates]
    if len(lines) == 1:
        lines.append("every image can be read; no duplicates")
    return "\n".join(lines)


def described(r: Info) -> str:
    width = max(len(k) for k, _ in r.facts)
    lines = [f"{k:{width}s}  {plain(v)}" for k, v in r.facts]
    if r.counts:
        splits = [s for s in (*SPLITS, UNSPLIT) if any(s in c for c in r.counts.values())]
        name = max(len(plain(c)) for c in [*r.counts, "class"])
        lines.append("")
        lines.append(f"{'class':{name}s} " + " ".join(f"{s:>7s}" for s in splits))
        lines += [f"{plain(c):{name}s} " + " ".join(f"{n.get(s, 0):7d}" for s in splits)
                  for c, n in r.counts.items()]
    if r.metrics:
        lines.append("")
        lines += [metrics_line(split, m) for split, m in r.metrics.items()]
    if r.skipped:
        lines.append(f"\n{len(r.skipped)} skipped (images that cannot be read, rows of the "
                     f"manifest that name no image to use):")
        lines += [f"  {plain(p)}: {plain(why)}" for p, why in r.skipped]
    return "\n".join(lines)


def reported(r: ReportResult) -> str:
    lines = [f"report with {len(r.sections)} sections and {r.pictures} pictures in "
             f"{r.seconds:.1f} s -> {plain(r.path)}"]
    return "\n".join(lines + [f"  {plain(n)}" for n in r.notes])


def demonstrated(r: DemoResult) -> str:
    return "\n".join([extracted(r.extract), fitted(r.fit), scored(r.score).splitlines()[0],
                      f"demo: digits test accuracy {r.score.accuracy:.4f} "
                      f"(validation {r.fit.metrics['val']['accuracy']:.4f})"])


_BY_RESULT = {"ExtractResult": extracted, "FitResult": fitted, "AuditResult": audited,
              "FinetuneResult": finetuned, "ScoreResult": scored, "ExportResult": exported,
              "ClassifyResult": classified, "CheckReport": checked, "Info": described,
              "ReportResult": reported, "DemoResult": demonstrated}


def summary(result) -> str:
    """Any result of featx's API as its command prints it."""
    return _BY_RESULT[type(result).__name__](result)
