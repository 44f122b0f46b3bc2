"""featx report and featx info: every section and picture of the page, checked in the page's
text and in a real browser (Playwright driving the system's Chromium)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil

import pytest
from PIL import Image

import featx
from featx.cli import main
from featx.cli.text import summary
from featx.reporting.audit_csv import Finding, write_audit
from featx.reporting.report import SECTIONS

from conftest import FAST, QUIET, write_folder

SECTION_IDS = [sid for sid, _ in SECTIONS]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("d") / "colours", {"train": 6, "val": 3})
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cache = featx.extract(root, out=root.parent / "colours.h5", **FAST).path
    return root, cache, featx.fit_head(cache).bundle


@pytest.fixture(scope="module")
def finetuned(fitted):
    root, _, bundle = fitted
    recipe = featx.Recipe(unfreeze="top:1", epochs=1, lr=1e-3, keep="finetuned")
    return featx.finetune(root, bundle, out=bundle.parent / "tuned", recipe=recipe, runtime=QUIET,
                          tensorboard=bundle.parent / "tb").bundle


def _pictures(page: str) -> list[Image.Image]:
    found = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            found.append(im)
    return found


def test_the_report_of_a_fitted_bundle_has_every_section_and_picture(fitted, tmp_path):
    root, _, bundle = fitted
    scored = featx.score(root / "val", bundle, out=tmp_path / "val.csv", runtime=QUIET)
    r = featx.report(bundle, scores=scored.csv)
    assert r.path == bundle / "report.html" and r.sections == SECTION_IDS
    page = r.path.read_text()
    assert re.findall(r'<section id="([^"]+)"', page) == SECTION_IDS
    # confusion, search, validation grid, samples, augmentation, the scored folder's confusion
    # (no mistakes: red vs blue is easy; no curves: logistic has no epochs)
    pictures = _pictures(page)
    assert len(pictures) == r.pictures == 6 and all(im.width > 100 for im in pictures)
    assert r.notes == ["curves: no training curves: a logistic head is fitted in one go, not epoch by epoch",
                       "audit: no audit beside the bundle's cache (`featx audit CACHE` writes one) and "
                       "none given (`audit` CSV)"]
    assert "no val image is wrong" in page and "broken.jpg" in page  # the skipped file, and why
    assert "labelled" in page and "95% interval" in page


def test_a_report_refuses_what_is_not_a_score_csv_before_drawing(fitted, tmp_path, capsys):
    bundle = fitted[2]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "binary.csv").write_bytes(b"\x00" * 10 + b"\xff" * 200_000)
    for bad in ("other.csv", "binary.csv", "missing.csv"):
        assert main(["report", str(bundle), "--scores", str(tmp_path / bad),
                     "--out", str(tmp_path / "r.html")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give the CSV `featx score` wrote" in err, err
    (tmp_path / "score.csv").write_text("kind,path,split,given,suggested,score,other\nlabel,a,train,x,y,2,\n")
    for bad in ("other.csv", "binary.csv", "missing.csv", "score.csv"):
        assert main(["report", str(bundle), "--audit", str(tmp_path / bad),
                     "--out", str(tmp_path / "r.html")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give the CSV `featx audit` wrote" in err, err
    assert not (tmp_path / "r.html").exists()


def _audited(tmp_path) -> tuple[object, list[Finding]]:
    """An audit CSV of the fitted bundle's images: a suspected label, a leak, a duplicate."""
    found = [Finding("label", "train/red/red1.png", "train", "red", "blue", 0.9),
             Finding("leak", "train/blue/blue0.png", "train/val", "blue", "blue", 1.0, "val/blue/blue0.png"),
             Finding("duplicate", "train/red/red2.png", "train", "red", "red", 0.93, "train/red/red3.png")]
    write_audit(tmp_path / "audit.csv", found)
    return tmp_path / "audit.csv", found


def test_the_audit_beside_the_cache_or_given_is_shown(fitted, tmp_path):
    root, cache, _ = fitted
    moved = shutil.copy(cache, tmp_path / "moved.h5")
    bundle = featx.fit_head(moved, search=False).bundle
    # Beside it. Random weights make any two images of a colour some 0.96 alike: the copies alone.
    audited = featx.audit(moved, similarity=0.999)
    assert len(audited.leaks) == 6  # write_folder repeats train's images in val, byte for byte
    r = featx.report(bundle, data=root, out=tmp_path / "r.html")
    section = re.search(r'<section id="audit">(.*?)</section>', r.path.read_text()).group(1)
    assert not [n for n in r.notes if n.startswith("audit")]
    assert f"0 suspected label errors, 6 leaks across splits, {len(audited.duplicates)} " in section
    assert len(_pictures(section)) == 1 and "val/blue/blue0.png" in section  # the pairs alone
    given, found = _audited(tmp_path)
    r = featx.report(bundle, data=root, out=tmp_path / "r.html", audit=given)
    section = re.search(r'<section id="audit">(.*?)</section>', r.path.read_text()).group(1)
    assert "1 suspected label errors, 1 leaks across splits, 1 near-duplicates" in section
    assert len(_pictures(section)) == 2 and all(f.path in section for f in found)
    os.utime(given, (0, 0))  # older than the cache
    r = featx.report(bundle, out=tmp_path / "r.html", audit=given)  # no images: the table alone
    section = re.search(r'<section id="audit">(.*?)</section>', r.path.read_text()).group(1)
    assert "older than the cache: run featx audit again" in section and not _pictures(section)


def test_a_report_without_the_images_says_what_to_pass(fitted, tmp_path):
    root, cache, _ = fitted
    moved = shutil.copy(cache, tmp_path / "moved.h5")  # apart from its images
    bundle = featx.fit_head(moved, search=False).bundle
    r = featx.report(bundle, out=tmp_path / "r.html")
    assert re.findall(r'<section id="([^"]+)"', r.path.read_text()) == SECTION_IDS
    assert sum("pass `data`" in n for n in r.notes) == 4
    again = featx.report(bundle, data=root, out=tmp_path / "r.html")
    assert not any("pass `data`" in n for n in again.notes) and again.pictures > r.pictures


def test_info_tells_what_a_cache_and_a_bundle_hold(fitted, finetuned, capsys):
    root, cache, bundle = fitted
    text = summary(featx.info(cache))
    assert "18 in 2 classes, 1 skipped" in text and "efficientnet_lite0" in text
    assert re.search(r"red\s+6\s+3", text) and "broken.jpg" in text
    assert f"colours ({root})" in text  # found where it was, beside the cache
    text = summary(featx.info(bundle))
    assert "logistic (C=" in text and "fitted on train+val" in text and "settings tried on val" in text
    assert re.search(r"parameters\s+1,281 trainable, 3,371,008 frozen", text)  # 1280 features + bias
    assert re.search(r"precision\s+(float32|bfloat16)\n", text)  # what score computes again
    assert re.search(r"val\s+n=6 ", text)
    text = summary(featx.info(finetuned))
    assert "fine-tuned" in text and "top:1 unfrozen" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(finetuned.parent / "tb")).Reload()  # epoch 0 is the head
    assert [e.step for e in logged.Scalars("accuracy/val")] == [0, 1]
    assert logged.Tags()["images"] == ["confusion"]
    assert main(["info", str(bundle)]) == 0 and "head" in capsys.readouterr().out
    assert main(["info", str(root)]) == 1
    assert "is neither a feature cache (.h5) nor a model bundle" in capsys.readouterr().err


def _chromium() -> str | None:
    for found in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if found and os.access(found, os.X_OK):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, the system's (Playwright's own download cannot run offline). Skipped
    where there is none, except in CI, whose .ci/run installs it."""
    chromium = _chromium()
    if (chromium is None or importlib.util.find_spec("playwright") is None) and not os.environ.get("CI"):
        pytest.skip("needs playwright and a system chromium (apt-get install chromium)")
    assert chromium, "CI must have chromium: .ci/run installs it with apt-get"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        yield b
        b.close()


def test_both_reports_open_in_a_real_browser(fitted, finetuned, browser, tmp_path):
    given, _ = _audited(tmp_path)
    for bundle in (fitted[2], finetuned):
        r = featx.report(bundle, out=tmp_path / f"{bundle.name}.html", audit=given)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto(r.path.as_uri())
        assert page.evaluate("() => [...document.querySelectorAll('section')].map(s => s.id)") == SECTION_IDS
        widths = page.evaluate("() => [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == r.pictures >= 5 and all(w > 0 for w in widths)
        # the audit's suspected labels and its pairs, side by side
        assert page.evaluate("() => [...document.querySelectorAll('#audit img')].map(i => i.naturalWidth)"
                             ).count(0) == 0 == len(widths) - r.pictures
        assert page.evaluate("() => document.querySelectorAll('#audit img').length") == 2
        assert errors == []
        page.screenshot(path=tmp_path / f"{bundle.name}.png", full_page=True)
        page.close()


def test_text_from_a_bundle_is_escaped_in_the_page(fitted, tmp_path):
    """A split named like markup in someone's bundle.json stays text: opening the report runs
    nothing of theirs."""
    _, _, bundle = fitted
    crafted = shutil.copytree(bundle, tmp_path / "crafted.logistic")
    doc = json.loads((crafted / "bundle.json").read_text())
    evil = "<img src=x onerror=alert(1)>"
    doc["metrics"] = {evil: doc["metrics"]["val"]}
    (crafted / "bundle.json").write_text(json.dumps(doc))
    page = featx.report(crafted, out=tmp_path / "r.html").path.read_text()
    assert evil not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_class_names_that_read_as_formulas_stay_text_in_the_bundle_predictions(tmp_path):
    root = write_folder(tmp_path / "sheet", {"train": 3, "val": 2},
                        classes={"=1+2": (220, 30, 30), "@SUM(1+1)": (30, 30, 220)})
    cache = featx.extract(root, out=tmp_path / "sheet.h5", **FAST).path
    bundle = featx.fit_head(cache, search=False, out=tmp_path / "sheet.logistic").bundle
    cells = (bundle / "predictions.csv").read_text().split()
    assert not any(c.split(",")[i].startswith(("=", "@")) for c in cells[1:] for i in (1, 2, 3))
    assert "'=1+2" in (bundle / "predictions.csv").read_text()
    page = featx.report(bundle, out=tmp_path / "r.html").path.read_text()
    assert "=1+2" in page and "'=1+2" not in page  # read back as the names they are
