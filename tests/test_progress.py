"""Progress where stderr is not a terminal: plain log lines, never carriage-return frames."""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import subprocess
import sys

import pytest
from torch import nn

import featx
from featx.backbones.preprocessing import Preprocessing
from featx.backbones.spec import BackboneSpec
from featx.util import progress
from featx.util.progress import progress_bar

from conftest import write_folder


@pytest.fixture
def log_lines(monkeypatch, caplog):
    """Progress messages as the featx logger gets them; stderr is not a terminal even under -s."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    caplog.set_level(logging.INFO, "featx")
    yield lambda: [r.getMessage() for r in caplog.records if r.name == "featx.util.progress"]
    assert stderr.getvalue() == ""  # the lines go through logging alone


def test_a_line_at_most_every_n_seconds_and_one_at_the_end(monkeypatch, log_lines):
    now = [100.0]
    monkeypatch.setattr(progress, "monotonic", lambda: now[0])
    monkeypatch.setenv("FEATX_PROGRESS_SECONDS", "10")
    with progress_bar(1600, "extract") as bar:
        bar.set_postfix(skipped=2)
        for _ in range(45):  # 32 images a second, stopped after 45 s
            now[0] += 1
            bar.update(32)
    assert log_lines() == [
        "extract: 320/1,600 img (20%), 32.0 img/s, ETA 0:40, skipped=2",
        "extract: 640/1,600 img (40%), 32.0 img/s, ETA 0:30, skipped=2",
        "extract: 960/1,600 img (60%), 32.0 img/s, ETA 0:20, skipped=2",
        "extract: 1,280/1,600 img (80%), 32.0 img/s, ETA 0:10, skipped=2",
        "extract: 1,440/1,600 img (90%), 32.0 img/s, in 0:45, skipped=2"]


def test_zero_seconds_is_every_step_of_an_iterable(monkeypatch, log_lines):
    monkeypatch.setattr(progress, "monotonic", itertools.count(100, 0.5).__next__)
    monkeypatch.setenv("FEATX_PROGRESS_SECONDS", "0")
    assert list(progress_bar(3, "check", iterable="abc")) == ["a", "b", "c"]
    assert log_lines() == ["check: 1/3 img (33%), 2.0 img/s, ETA 0:01",
                           "check: 2/3 img (67%), 2.0 img/s, ETA 0:00",
                           "check: 3/3 img (100%), 1.5 img/s, in 0:02"]  # the last step: one line
    assert list(progress_bar(3, "check", enabled=False, iterable="abc")) == ["a", "b", "c"]
    assert len(log_lines()) == 3  # disabled: nothing more


@pytest.mark.parametrize("text", ["often", "-1", "nan"])
def test_an_unusable_interval_is_refused(monkeypatch, log_lines, text):
    monkeypatch.setenv("FEATX_PROGRESS_SECONDS", text)
    with pytest.raises(featx.ConfigError, match=f"FEATX_PROGRESS_SECONDS='{text}': expected a number"):
        progress_bar(3, "check")


def test_extraction_logs_its_progress_and_skips(tmp_path, monkeypatch, register, log_lines):
    # The default backbone takes seconds to build; this one, milliseconds.
    crop = Preprocessing(20, 16, "bilinear", (0.5,) * 3, (0.25,) * 3)
    register(BackboneSpec(name="tiny_progress_net", source="tests", preprocessing=crop,
                          build=lambda: nn.Conv2d(3, 4, 3), tap=lambda m: m, spatial=True))
    folder = write_folder(tmp_path / "d", {"": 2})
    (folder / "red" / "broken.png").write_bytes(b"")
    monkeypatch.setenv("FEATX_PROGRESS_SECONDS", "0")
    featx.extract(folder, "tiny_progress_net", weights="none",
                  runtime=featx.Runtime(workers=0, batch_size=2, execution="eager"))
    lines = log_lines()
    assert len(lines) == 3 and lines[-1].startswith("extract tiny_progress_net: 5/5 img (100%), ")
    assert lines[-1].endswith(", skipped=1")


def test_the_command_line_through_a_pipe_writes_lines_not_frames(tmp_path):
    folder = write_folder(tmp_path / "d", {"train": 3, "val": 2})
    r = subprocess.run([sys.executable, "-m", "featx", "check", str(folder), "--workers", "0"],
                       capture_output=True, text=True, env={**os.environ, "FEATX_PROGRESS_SECONDS": "0"})
    assert r.returncode == 0 and "\r" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    counts = [line.split(" img ")[0] for line in lines]
    assert counts == [f"featx: check: {i}/10" for i in range(1, 11)]
    assert re.fullmatch(r"featx: check: 10/10 img \(100%\), [\d.]+ img/s, in 0:0\d", lines[-1])
