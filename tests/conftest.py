"""Shared fixtures: tiny generated image folders, and a torch hub cache of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featx


def fast(**runtime) -> dict:
    """Random-weight default backbone, decoding in the main process: fast, and weights don't
    matter. ``runtime``: other ``Runtime`` settings."""
    return {"weights": "none", "runtime": featx.Runtime(workers=0, progress=False, **runtime)}


FAST = fast()
QUIET = featx.Runtime(workers=0, progress=False)  # decoding in the main process, no progress bar
# Two classes a random-weight network still tells apart: reddish and bluish noise.
COLOURS = {"blue": (40, 60, 200), "red": (200, 50, 40)}


def write_image(path: Path, colour=(128, 128, 128), size=(40, 32), seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def write_folder(root: Path, splits: dict[str, int], classes=COLOURS) -> Path:
    """``splits``: split folder name ("" for a pool) -> images per class."""
    for split, n in splits.items():
        for c, (name, colour) in enumerate(classes.items()):
            for i in range(n):
                write_image(root / split / name / f"{name}{i}.png", colour, seed=100 * c + i)
    return root


def freeze_at_first_shard(proc: subprocess.Popen, partial: Path) -> None:
    """Wait for the extraction ``proc`` to write its first durable shard into ``partial``, then
    freeze it there (SIGSTOP), holding its lock, to be killed as a crash would."""
    give_up = time.monotonic() + 600  # only so that a stuck run cannot hang the suite
    while not list(partial.glob("shard-*.npz")):
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < give_up, "no shard after 10 minutes"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)


def ctrl_c_after(monkeypatch, batches: int) -> None:
    """Make the next extraction stop as Ctrl-C would, once ``batches`` batches reached its partial;
    the run after that goes on undisturbed."""
    from featx.cache.partial import Partial

    add, calls = Partial.add, []

    def add_then_ctrl_c(self, *args):
        add(self, *args)
        calls.append(args)
        if len(calls) == batches:
            monkeypatch.setattr(Partial, "add", add)
            raise KeyboardInterrupt

    monkeypatch.setattr(Partial, "add", add_then_ctrl_c)


@pytest.fixture(autouse=True)
def torch_home(tmp_path_factory, monkeypatch) -> Path:
    """Tests never read or write the user's torch hub cache (downloaded weights, shape cache)."""
    home = tmp_path_factory.getbasetemp() / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Default outputs (cache/) land in the test's own folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def split_folder(tmp_path) -> Path:
    return write_folder(tmp_path / "colours", {"train": 6, "val": 3, "test": 2})


@pytest.fixture
def pool_folder(tmp_path) -> Path:
    return write_folder(tmp_path / "pool", {"": 6})


@pytest.fixture
def register():
    """``featx.register`` for this test only: each backbone it adds is removed after the test."""
    added: list[str] = []

    def add(spec: featx.BackboneSpec) -> featx.BackboneSpec:
        featx.register(spec)
        added.append(spec.name)
        return spec

    yield add
    for name in added:
        featx.unregister(name)


@pytest.fixture(scope="session")
def lite0_random():
    """The default backbone's architecture with random weights: fast, and no weights needed."""
    return featx.load_backbone("efficientnet_lite0", weights="none")
