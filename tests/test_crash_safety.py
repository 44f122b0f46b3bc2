"""A killed, interrupted or starved extraction leaves a cache that opens, and the rerun goes on."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featx
from featx.cache import partial as partial_mod
from featx.cache.lock import locked

from conftest import FAST, ctrl_c_after, fast, freeze_at_first_shard, write_folder


def assert_same_cache(a: featx.FeatureCache, b: featx.FeatureCache) -> None:
    assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> featx.FeatureCache:
    """Twelve images in three splits, extracted without interruption."""
    root = write_folder(tmp_path_factory.mktemp("w") / "colours", {"train": 3, "val": 2, "test": 1})
    return featx.open_cache(featx.extract(root, out=root.parent / "whole.h5", **FAST).path)


def test_kill_9_mid_run_then_the_same_command_resumes_at_once(tmp_path):
    data = write_folder(tmp_path / "many", {"": 8})
    # With a decoding worker, which outlives its killed parent by a few seconds.
    cmd = [sys.executable, "-m", "featx", "extract", str(data), "--out", "killed.h5", "--weights",
           "none", "--workers", "1", "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = Path("killed.h5.partial")
    try:
        freeze_at_first_shard(proc, partial)
        with pytest.raises(featx.CacheError, match=rf"^killed.h5 is being written by another featx "
                                                   rf"process \(pid {proc.pid}\): wait for it"):
            featx.extract(data, out="killed.h5", **FAST)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not Path("killed.h5").exists()

    resumed = featx.extract(data, out="killed.h5", **FAST)
    assert 0 < resumed.n_reused < 16 and resumed.n_images == 16
    assert not partial.exists() and not Path("killed.h5.lock").exists()
    fresh = featx.extract(data, out="fresh.h5", **FAST)
    assert_same_cache(featx.open_cache(resumed.path), featx.open_cache(fresh.path))


def _full_disk_on_the_third_shard(monkeypatch):
    savez, calls = np.savez, []

    def savez_or_full(file, **arrays):
        calls.append(file)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        savez(file, **arrays)

    monkeypatch.setattr(partial_mod, "FLUSH_SECONDS", 0)  # a shard per batch
    monkeypatch.setattr(np, "savez", savez_or_full)
    return 8, 4  # images kept (two batches of 4), left to extract


def _full_disk_writing_the_cache(monkeypatch):
    def full(self, key, value):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    return 12, 0


@pytest.mark.parametrize("fill", [_full_disk_on_the_third_shard, _full_disk_writing_the_cache])
def test_a_full_disk_is_one_clean_error_and_what_was_written_stays_valid(whole, fill):
    data = whole.path.parent / whole.attrs["data"]
    with pytest.MonkeyPatch.context() as disk:
        kept, left = fill(disk)
        with pytest.raises(featx.CacheError) as e:
            featx.extract(data, out="full.h5", **fast(batch_size=4))
    assert str(e.value) == (f"cannot write full.h5.partial (No space left on device): make room or fix "
                            f"the folder, then run the same command again; the {kept} images "
                            f"extracted so far are kept in full.h5.partial")
    assert not Path("full.h5").exists() and not list(Path("full.h5.partial").glob("*.tmp"))

    r = featx.extract(data, out="full.h5", **fast(batch_size=4))
    assert (r.n_reused, r.n_extracted) == (kept, left)
    assert_same_cache(featx.open_cache(r.path), whole)


def test_a_damaged_partial_is_found_out_and_only_what_it_lost_is_redone(whole, monkeypatch, caplog):
    data = whole.path.parent / whole.attrs["data"]
    Path("cut.h5.partial").write_bytes(b"an unfinished cache of featx 0.1, one HDF5 file")
    monkeypatch.setattr(partial_mod, "FLUSH_SECONDS", 0)  # a shard per batch
    ctrl_c_after(monkeypatch, batches=3)
    with pytest.raises(KeyboardInterrupt):
        featx.extract(data, out="cut.h5", **fast(batch_size=4))
    shards = sorted(Path("cut.h5.partial").glob("shard-*.npz"))
    assert len(shards) == 3
    shards[1].write_bytes(shards[1].read_bytes()[:1000])  # torn by a disk that lied about syncing
    Path("cut.h5.partial/shard-000004.npz.tmp").write_bytes(b"left by a writer killed mid-shard")

    with caplog.at_level(logging.INFO, logger="featx"):
        r = featx.extract(data, out="cut.h5", **fast(batch_size=4))
    assert (r.n_reused, r.n_extracted) == (8, 4)
    assert any(m.startswith("cut.h5.partial: deleted 1 shard(s) that cannot be used, e.g. "
                            "shard-000002.npz (") for m in caplog.messages)
    assert_same_cache(featx.open_cache(r.path), whole)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(whole):
    data = whole.path.parent / whole.attrs["data"]
    refused = pytest.raises(featx.CacheError, match=rf"^busy.h5 is being written by another featx process "
                                                    rf"\(pid {os.getpid()}\): wait for it to finish, or "
                                                    rf"stop it, then run this again$")
    with locked(Path("busy.h5")), refused:
        featx.extract(data, out="busy.h5", **FAST)
    assert not Path("busy.h5").exists() and not Path("busy.h5.lock").exists()


def _stat(pid: int | str) -> list[str] | None:
    """State, parent and the rest of /proc/PID/stat after the name; None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*")
            if (stat := _stat(p.name)) is not None and int(stat[1]) == pid]


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has ended, waiting to be reaped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
@pytest.mark.parametrize("command", ["extract", "check"])
def test_no_worker_outlives_a_killed_run(tmp_path, command):
    """Killed while its workers are busy: the workers end with it (a check's pool of processes,
    waiting on its queue, would otherwise wait for ever)."""
    data = tmp_path / "large"
    for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(12):  # large enough that decoding them takes seconds: the run is caught mid-way
            Image.new("RGB", (3000, 3000), colour).save(data / f"class{c}" / f"{i}.png", compress_level=1)
    cmd = [sys.executable, "-m", "featx", command, str(data), "--workers", "2", "--no-progress"]
    if command == "extract":
        cmd += ["--out", str(tmp_path / "k.h5"), "--weights", "none", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        give_up = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < give_up:
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)  # as a crash would find it: mid-run
        workers = _children(proc.pid)
        assert workers, "the run had no worker to lose"
    finally:
        proc.kill()
        proc.wait()
    give_up = time.monotonic() + 5  # "a few seconds", as the issue allows
    while any(map(_running, workers)) and time.monotonic() < give_up:
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    assert not alive, f"workers {alive} outlived their killed parent"
