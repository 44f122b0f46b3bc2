"""``featx report``: one self-contained HTML page about a bundle, to decide whether its model is
good: what it was made from and how, its metrics with their uncertainty, and pictures (the
confusion matrix, training curves, the search, validation images right and wrong, the most
confidently wrong ones, samples of each class, what fine-tuning's augmentation shows the model),
the audit of its cache (suspected label errors, near-duplicates and leaks) and a scored folder's
results. Every picture is inlined, so the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backbones.preprocessing import Preprocessing
from ..bundle import Bundle, load_bundle
from ..cache.format import data_id
from ..cache.reader import FeatureCache, open_cache
from ..data.folders import SPLITS, Dataset, Sample, scan
from ..data.images import load_rgb
from ..errors import BundleError, CacheError, ConfigError, DataError, first_line
from ..evaluation import METRICS, PREDICTIONS_FILE, TOP_K, Predictions, read_predictions
from ..util.files import check_replaceable, durable_write, inside, metrics_path, uncell
from ..util.schema import Invalid, check, load_json
from .audit_csv import Finding, audit_path, read_audit
from .info import UNSPLIT, bundle_info, cache_counts
from .plots import image_grid_png

log = logging.getLogger(__name__)

# How every page begins, up to the bundle's name: what tells a page featx wrote from a file it
# must not replace.
PAGE_START = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>featx report: '

# The sections, in page order: (id, heading). Each is always there; one that has nothing to show
# says why, so a reader (and the browser test) finds every one.
SECTIONS = (("summary", "Summary"), ("data", "Data"), ("metrics", "Metrics"),
            ("confusion", "Confusion matrix"), ("curves", "Training curves"), ("search", "Search"),
            ("predictions", "Validation images"), ("mistakes", "Most confidently wrong"),
            ("samples", "Samples of each class"), ("augmentation", "Augmentation"),
            ("audit", "Audit: labels and duplicates"), ("scores", "Scored folder"))
GRID_IMAGES = 32        # validation images shown, the wrong ones first
WRONG_IMAGES = 16       # most confidently wrong
SAMPLES_PER_CLASS = 6
SAMPLE_CLASSES = 20     # classes shown in the samples grid
AUGMENTED_VIEWS = 6     # views per image in the augmentation preview
AUDIT_LABELS = 16       # the most suspicious labels shown
AUDIT_PAIRS = 8         # the most similar pairs shown, leaks first


@dataclass
class ReportResult:
    path: Path
    sections: list[str]
    pictures: int
    notes: list[str]  # what could not be shown, and why
    seconds: float
def _img(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(png.stem)}">'


def _table(header: list[str] | None, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if header else ''}<tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# The metrics' columns: (key, heading); a bundle of an earlier featx has only some of them.
_COLUMNS = (("n", "images"), ("accuracy", "accuracy"), ("accuracy_ci95", "95% interval"),
            ("balanced_accuracy", "balanced accuracy"), ("f1_macro", "macro F1"), ("loss", "log loss"),
            (f"top{TOP_K}_accuracy", f"top-{TOP_K} accuracy"), ("roc_auc", "ROC AUC"))


def _figure(value) -> str:
    if isinstance(value, list):
        return f"{value[0]:.3f} to {value[1]:.3f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict) -> str:
    shown = [(k, h) for k, h in _COLUMNS if any(k in m for m in metrics.values())]
    return _table(["split", *(h for _, h in shown)],
                  [[split, *(_figure(m[k]) if k in m else "" for k, _ in shown)]
                   for split, m in metrics.items()])


def _per_class_table(m: dict) -> str:
    return _table(["class", "precision", "recall", "F1", "images"],
                  [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                   for c, v in m["per_class"].items()])


class _Page:
    """The sections as they are written, and the pictures drawn for them into a scratch folder."""

    def __init__(self, scratch: Path):
        self.scratch, self.parts, self.notes, self.pictures = scratch, {}, [], 0

    def add(self, section: str, *html_parts: str) -> None:
        self.parts.setdefault(section, []).extend(html_parts)

    def picture(self, section: str, png: Path) -> None:
        self.add(section, _img(png))
        self.pictures += 1

    def missing(self, section: str, why: str) -> None:
        self.notes.append(f"{section}: {why}")
        self.add(section, _note(why))

    def draw(self, section: str, name: str, make: Callable[[Path], object]) -> None:
        path = self.scratch / name
        make(path)
        self.picture(section, path)


@dataclass
class _Images:
    """The image folder a bundle was fitted on, and the crop its model sees."""

    root: Path
    preprocessing: Preprocessing

    def crops(self, paths: list[str]) -> tuple[list[np.ndarray], list[int]]:
        """The images as the model saw them (resized and centre-cropped), and which of ``paths``
        could be read; an image gone since is left out, and so is a path outside ``root`` (they
        come from the bundle's predictions.csv, which is data: ``/abs/x.png``, ``../../x.png``)."""
        images, kept = [], []
        for i, p in enumerate(paths):
            try:
                image = load_rgb(inside(self.root, p))
                images.append(self.preprocessing.crop(image).permute(1, 2, 0).numpy())
                kept.append(i)
            except (OSError, ValueError) as e:
                log.debug("report: %s left out (%s)", p, e)
        return images, kept


def _prediction_pictures(page: _Page, found: _Images, held: Predictions, classes: list[str], split: str
                         ) -> None:
    wrong = np.flatnonzero(held.predicted != held.labels)
    right = np.flatnonzero(held.predicted == held.labels)
    rng = np.random.default_rng(0)
    shown = np.concatenate([wrong[:GRID_IMAGES // 2],
                            rng.permutation(right)[:GRID_IMAGES - min(len(wrong), GRID_IMAGES // 2)]])

    def caption(i: int) -> str:
        truth, guess = classes[held.labels[i]], classes[held.predicted[i]]
        return (f"{guess} ({held.confidence[i]:.2f})" if truth == guess
                else f"{guess} ({held.confidence[i]:.2f}), truly {truth}")

    images, kept = found.crops([held.paths[i] for i in shown])
    page.add("predictions", _note(f"{len(wrong)} of {len(held.paths)} {split} images are wrong; "
                                  f"{len(images)} shown, wrong ones in red, with the predicted "
                                  f"class and its probability."))
    page.draw("predictions", "predictions.png", lambda p: image_grid_png(
        images, [caption(shown[k]) for k in kept], p, f"{split} images: predicted (probability)",
        wrong=[held.predicted[shown[k]] != held.labels[shown[k]] for k in kept]))
    if not len(wrong):
        page.add("mistakes", _note(f"no {split} image is wrong."))
        return
    worst = wrong[np.argsort(-held.confidence[wrong])][:WRONG_IMAGES]
    images, kept = found.crops([held.paths[i] for i in worst])
    page.draw("mistakes", "mistakes.png", lambda p: image_grid_png(
        images, [f"{caption(worst[k])}\n{Path(held.paths[worst[k]]).name}" for k in kept], p,
        f"the {len(kept)} most confidently wrong {split} images", wrong=[True] * len(kept)))


def _sample_pictures(page: _Page, found: _Images, dataset: Dataset, classes: list[str]) -> None:
    rng = np.random.default_rng(0)
    shown, captions = [], []
    number = {name: i for i, name in enumerate(dataset.classes)}  # by name: ``data`` may hold others
    for name in classes[:SAMPLE_CLASSES]:
        mine = [s.path.as_posix() for s in dataset.samples if s.label == number.get(name)]
        picked = [mine[i] for i in sorted(rng.permutation(len(mine))[:SAMPLES_PER_CLASS])]
        shown += picked
        captions += [name] * len(picked)
    images, kept = found.crops(shown)
    more = f" (the first {SAMPLE_CLASSES} of {len(classes)} classes)" if len(classes) > SAMPLE_CLASSES else ""
    page.draw("samples", "samples.png", lambda p: image_grid_png(
        images, [captions[k] for k in kept], p, f"{SAMPLES_PER_CLASS} images of each class{more}",
        columns=SAMPLES_PER_CLASS))


def _augmentation_pictures(page: _Page, found: _Images, dataset: Dataset, bundle: Bundle) -> None:
    import torch

    from ..data.augmentation import AUGMENTATIONS, train_transform

    # A fine-tune whose verdict kept the head leaves its settings, but no model trained with them.
    kept = bundle.info.get("verdict", {}).get("kept", "finetuned")
    settings = bundle.info.get("settings") if kept == "finetuned" else None
    augment = settings.get("augment", []) if settings else AUGMENTATIONS  # fine-tuning's default
    seed = settings.get("seed", 0) if settings else 0
    held = dataset.samples
    page.add("augmentation", _note(
        ("the augmentation this model was fine-tuned with: " if settings else
         "what `featx finetune` with its default settings would show the model: ") +
        (", ".join(augment) or "none") + "; the first image of each row is the plain crop."))
    transform = train_transform(found.preprocessing, augment)
    rng = np.random.default_rng(seed)
    picks = [held[i].path.as_posix() for i in sorted(rng.permutation(len(held))[:2])]
    plain, kept = found.crops(picks)
    views, captions = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k, image in zip(kept, plain, strict=True):
            views.append(image)
            captions.append("plain crop")
            source = load_rgb(found.root / picks[k])
            views += [transform(source).permute(1, 2, 0).numpy() for _ in range(AUGMENTED_VIEWS)]
            captions += [f"view {v + 1}" for v in range(AUGMENTED_VIEWS)]
    page.draw("augmentation", "augmentation.png", lambda p: image_grid_png(
        views, captions, p, "augmented views", columns=AUGMENTED_VIEWS + 1))


def _read_scores(scores: Path) -> tuple[list[dict], dict | None]:
    """The rows of a CSV ``featx score`` wrote, and the metrics beside it; refused in one line
    before any picture is drawn if it is not one."""
    fix = "give the CSV `featx score` wrote"
    try:
        with open(scores, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            if not {"path", "predicted", "error"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"`scores` {scores} is not a CSV of `featx score` (no path, "
                                  f"predicted and error columns): {fix}")
            rows = list(reader)
        short = next((n for n, r in enumerate(rows, 2)
                      if None in (r["path"], r["predicted"], r["error"])), 0)
        if short:
            raise Invalid(f"row {short}", "has fewer cells than its header")
        found = metrics_path(scores)
        m = load_json(found.read_text(), found.name) if found.is_file() else None
        if m is not None:
            check(m, METRICS, found.name)
        return rows, m
    except Invalid as e:
        raise ConfigError(f"`scores` {scores} is not as `featx score` writes it ({e}): {fix}") from e
    except (OSError, csv.Error, ValueError) as e:
        raise ConfigError(f"cannot read `scores` {scores} ({first_line(e)}): {fix}") from e


def _scores(page: _Page, scores: Path, rows: list[dict], m: dict | None) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("predicted"):
            counts[uncell(r["predicted"])] = counts.get(uncell(r["predicted"]), 0) + 1
    failed = [[uncell(r["path"]), uncell(r["error"])] for r in rows if r.get("error")]
    page.add("scores", _note(f"{scores}: {len(rows)} images, {len(failed)} skipped."),
             _table(["predicted class", "images"], [[c, n] for c, n in sorted(counts.items())]))
    if m and m.get("n_fitted"):
        page.add("scores", _note(f"The head was fitted on {m['n_fitted']} of these {m['n']} labelled "
                                 f"images: their predictions are not held out."),
                 _metrics_table({**({"held-out": m["held_out"]} if "held_out" in m else {}),
                                 "all (not held out)": m}), _per_class_table(m))
    elif m:
        page.add("scores", _metrics_table({"labelled": m}), _per_class_table(m))
    if scores.with_suffix(".png").is_file():
        page.picture("scores", scores.with_suffix(".png"))
    if failed:
        page.add("scores", _table(["skipped", "why"], failed))


def _audit_beside(b: Bundle) -> Path | None:
    """The audit beside the bundle's cache, where `featx audit` wrote one."""
    found = audit_path(Path(b.info["cache"])) if b.info.get("cache") else None
    return found if found is not None and found.is_file() else None


def _read_audit(path: Path) -> list[Finding]:
    """The rows of a CSV ``featx audit`` wrote; refused in one line if it is not one."""
    fix = "give the CSV `featx audit` wrote"
    try:
        return read_audit(path)
    except Invalid as e:
        raise ConfigError(f"`audit` {path} is not as `featx audit` writes it ({e}): {fix}") from e
    except (OSError, csv.Error, ValueError) as e:
        raise ConfigError(f"cannot read `audit` {path} ({first_line(e)}): {fix}") from e


def _audit_section(page: _Page, path: Path | None, findings: list[Finding] | None,
                   images: _Images | None, fc: FeatureCache | None) -> None:
    """The audit's counts, its most suspicious labels and most similar pairs: as pictures where
    the images can be shown, as a table always."""
    if path is None:
        page.missing("audit", "no audit beside the bundle's cache (`featx audit CACHE` writes one) "
                              "and none given (`audit` CSV)")
        return
    try:
        findings = findings if findings is not None else _read_audit(path)
    except ConfigError as e:  # found beside the cache, not asked for: said, not fatal
        page.missing("audit", str(e))
        return
    kinds = {k: [f for f in findings if f.kind == k] for k in ("label", "leak", "duplicate")}
    stale = fc is not None and path.stat().st_mtime < fc.path.stat().st_mtime
    page.add("audit", _note(f"{path}: {len(kinds['label'])} suspected label errors, {len(kinds['leak'])} "
                            f"leaks across splits, {len(kinds['duplicate'])} near-duplicates within one"
                            + ("; older than the cache: run featx audit again" if stale else "") + "."))
    labels, pairs = kinds["label"][:AUDIT_LABELS], (kinds["leak"] + kinds["duplicate"])[:AUDIT_PAIRS]
    if images is not None:
        _audit_pictures(page, images, labels, pairs)
    if labels or pairs:
        page.add("audit", _table(["kind", "image", "split", "given", "suggested", "score", "other"],
                                 [[f.kind, f.path, f.split, f.given, f.suggested, f"{f.score:.3f}",
                                   f.other] for f in labels + pairs]))


def _audit_pictures(page: _Page, images: _Images, labels: list[Finding], pairs: list[Finding]) -> None:
    """The suspected label errors, each with its given and suggested class; the pairs side by
    side, two to a row, leaks framed in red."""
    crops, kept = images.crops([f.path for f in labels])
    if crops:
        page.draw("audit", "audit_labels.png", lambda p: image_grid_png(
            crops, [f"given {labels[k].given}, suggested {labels[k].suggested} (p of given "
                    f"{1 - labels[k].score:.2f}) {Path(labels[k].path).name}" for k in kept], p,
            f"the {len(kept)} most suspicious labels", wrong=[True] * len(kept)))
    crops, kept = images.crops([p for f in pairs for p in (f.path, f.other)])
    whole = [k for k in kept if k % 2 == 0 and k + 1 in kept]  # pairs with both images found
    if whole:
        shown = [pairs[k // 2] for k in whole]
        place = {k: i for i, k in enumerate(kept)}
        page.draw("audit", "audit_pairs.png", lambda p: image_grid_png(
            [crops[place[k + j]] for k in whole for j in (0, 1)],
            [c for f in shown for c in (f"{f.kind} {f.score:.3f}: {f.path}", f"{f.split}: {f.other}")],
            p, f"the {len(shown)} most similar pairs, leaks first (red)",
            wrong=[f.kind == "leak" for f in shown for _ in (0, 1)], columns=4))


def _style() -> str:
    return ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
            "text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}"
            ".note{color:#555;font-style:italic}section{margin-bottom:2em}")


def report(bundle: str | os.PathLike, scores: str | os.PathLike | None = None,
           data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           force: bool = False, audit: str | os.PathLike | None = None) -> ReportResult:
    """Write one self-contained HTML page about ``bundle`` (default: ``BUNDLE/report.html``).

    ``data``: the image folder the bundle was fitted on, for the pictures of images, when it is
    not where the bundle's cache says; ``scores``: a CSV ``featx score`` wrote, shown with its
    metrics when its images were labelled; ``audit``: a CSV ``featx audit`` wrote (default: the
    one beside the bundle's cache, where there is one). ``force``: replace an ``out`` featx did
    not write (never a file the page is made from).
    """
    start = time.perf_counter()
    b = load_bundle(bundle)
    path = Path(out) if out else b.path / "report.html"
    if path.is_dir():
        raise ConfigError(f"`out` {path} is a folder: give the HTML file's path, e.g. {path / 'report.html'}")
    audited = Path(audit) if audit is not None else _audit_beside(b)
    reads = [*b.own_files(), *([Path(b.info["cache"])] if b.info.get("cache") else []),
             *([Path(scores), metrics_path(Path(scores)), Path(scores).with_suffix(".png")]
               if scores else []), *([audited] if audited else [])]
    check_replaceable(path, re.compile(re.escape(PAGE_START.encode())), reads, force)
    scored = _read_scores(Path(scores)) if scores is not None else None
    findings = _read_audit(audited) if audit is not None else None
    if data is not None and not Path(data).is_dir():
        raise DataError(f"`data` {data}: no such image folder: give the folder the bundle was "
                        f"fitted on")
    try:
        fc, unread = open_cache(b.info.get("cache", ""), in_memory=False), None
    except CacheError as e:
        fc, unread = None, str(e)
    root = Path(data) if data is not None else _named_data(b, fc)
    with tempfile.TemporaryDirectory() as scratch:
        page = _Page(Path(scratch))
        facts = bundle_info(b)  # the bundle loaded and checked once
        page.add("summary", _table(None, [list(f) for f in facts.facts]))
        _data_section(page, fc, unread)
        _result_sections(page, b)
        images = _image_sections(page, b, root, fc)
        _audit_section(page, audited, findings, images, fc)
        if scores is not None:
            _scores(page, Path(scores), *scored)
        else:
            page.missing("scores", "no scored folder given (featx report BUNDLE `scores` CSV)")
        _write_page(path, page, b.path.name)
    return ReportResult(path, [sid for sid, _ in SECTIONS], page.pictures, page.notes,
                        time.perf_counter() - start)


def _result_sections(page: _Page, b: Bundle) -> None:
    """The metrics, the pictures the bundle holds (confusion, curves, search) and the search's
    table."""
    page.add("metrics", _metrics_table(b.metrics))
    shown = "val" if "val" in b.metrics else next(iter(b.metrics), None)
    if shown and "per_class" in b.metrics[shown]:
        page.add("metrics", f"<h3>per class, {html.escape(shown)}</h3>", _per_class_table(b.metrics[shown]))
    for section, names in (("confusion", sorted(b.path.glob("confusion_*.png"))),
                           ("curves", [b.path / "history.png"]), ("search", [b.path / "search.png"])):
        for png in names:
            if png.is_file() and png.name in b.files:
                page.picture(section, png)
    if not (b.path / "history.png").is_file():
        page.missing("curves", f"no training curves: a {b.model} head is fitted in one go, "
                               f"not epoch by epoch")
    if "search" in b.info:
        s = b.info["search"]
        keys = list(s["chosen"])
        page.add("search", _table([*keys, "val accuracy", "val loss", "seconds", ""], [
            [*(f"{t['params'][k]:g}" for k in keys), f"{t['val_accuracy']:.4f}",
             f"{t['val_loss']:.4f}", t["seconds"], "chosen" if t["params"] == s["chosen"] else ""]
            for t in s["trials"]]))
    else:
        page.missing("search", "no search was run for this bundle (fit-head `search` runs one)")


def _write_page(path: Path, page: _Page, bundle_name: str) -> None:
    body = "".join(f'<section id="{sid}"><h2>{html.escape(name)}</h2>{"".join(page.parts.get(sid, []))}'
                   f"</section>" for sid, name in SECTIONS)
    doc = (f"{PAGE_START}{html.escape(bundle_name)}</title><style>{_style()}</style></head><body>"
           f"<h1>featx report: {html.escape(bundle_name)}</h1>{body}</body></html>")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with durable_write(path) as tmp:
            tmp.write_text(doc, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror or e}): choose another `out`") from e


def _named_data(b: Bundle, fc: FeatureCache | None) -> Path | None:
    """The image folder bundle.json names, where the cache it names was extracted from that very
    folder (the ``data_id`` the cache recorded): bundle.json is data, and a folder it names
    (``/usr``) is never walked on its word alone. None where it is not (moved since, or another),
    and the image sections ask for `data`."""
    named = b.info.get("data")
    if not named or fc is None:
        return None
    folder = Path(named).resolve()
    return folder if folder.is_dir() and fc.attrs.get("data_id") == data_id(folder) else None


def _labelled_images(root: Path, fc: FeatureCache | None) -> Dataset:
    """The images the head was fitted on: as the cache lists them (labelled by class folders or
    by a manifest), else as the folder's class subfolders hold them."""
    if fc is None:
        return scan(root)
    rows = zip(fc.paths, fc.labels, fc.splits, strict=True)
    return Dataset(root, tuple(fc.classes), tuple(Sample(Path(p), int(n), str(s)) for p, n, s in rows))


def _data_section(page: _Page, fc: FeatureCache | None, unread: str | None) -> None:
    if fc is None:
        page.missing("data", f"the bundle's cache cannot be read, so its counts are not shown ({unread})")
        return
    counts = cache_counts(fc)
    splits = [s for s in (*SPLITS, UNSPLIT) if any(s in c for c in counts.values())]
    page.add("data", _table(["class", *splits],
                            [[c, *(n.get(s, 0) for s in splits)] for c, n in counts.items()]))
    if fc.failed:
        page.add("data", f"<h3>{len(fc.failed)} skipped as unreadable</h3>",
                 _table(["image", "why"], [list(f) for f in fc.failed]))
    else:
        page.add("data", _note("every image could be read."))


def _image_sections(page: _Page, b: Bundle, root: Path | None, fc: FeatureCache | None
                    ) -> _Images | None:
    """The sections of the folder's images; returns the images, for the audit's pictures (None
    where they cannot be shown, and each section says why)."""
    sections = ("predictions", "mistakes", "samples", "augmentation")
    if root is None or not b.identity.preprocessing:
        why = ("the image folder is not known (none named, or not the one the bundle's cache was "
               "extracted from, or moved since): pass `data` with it" if root is None else
               "the features were made outside featx (write_cache): no crop is recorded to show")
        for s in sections:
            page.missing(s, why)
        return None
    found = _Images(root, Preprocessing.from_dict(b.identity.preprocessing))
    if PREDICTIONS_FILE in b.files:
        try:
            held = read_predictions(b.path / PREDICTIONS_FILE, b.classes)
        except (KeyError, ValueError, TypeError, AttributeError, csv.Error) as e:
            raise BundleError(f"{b.path / PREDICTIONS_FILE} is damaged ({first_line(e)}): fit the "
                              f"head again") from e
        split = "val" if "val" in held else next(iter(held), None)
        if split:
            _prediction_pictures(page, found, held[split], b.classes, split)
    if "predictions" not in page.parts:
        for s in ("predictions", "mistakes"):
            page.missing(s, "the bundle holds no held-out predictions (no validation split)")
    dataset = _labelled_images(root, fc)
    _sample_pictures(page, found, dataset, b.classes)
    _augmentation_pictures(page, found, dataset, b)
    return found
