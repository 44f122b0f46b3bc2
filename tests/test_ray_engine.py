"""The Ray engine writes the local engine's cache: on a local Ray of two CPUs, the same rows, skip
records and features, a killed run resumed (and in it a lost worker), a folder scored alike, and
without Ray one line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import featx
from featx.cli import main

from conftest import FAST, freeze_at_first_shard, write_folder

# Actors decode in a thread of their own: Runtime.workers is their number here.
ON_RAY = dict(weights="none", engine=featx.RayEngine(block_size=4))


def ray_runtime(workers: int = 2) -> featx.Runtime:
    return featx.Runtime(workers=workers, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray of two CPUs on this machine, as CI starts it; its actors use the tests' torch hub."""
    import ray

    home = tmp_path_factory.getbasetemp() / "torch_home"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TORCH_HOME": str(home)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three splits and a file that is not an image."""
    root = write_folder(tmp_path_factory.mktemp("ray") / "colours", {"train": 5, "val": 2, "test": 1})
    (root / "train" / "red" / "notes.jpg").write_text("not an image")
    return root


def assert_same_cache(local: Path, on_ray: Path) -> None:
    a, b = featx.open_cache(local), featx.open_cache(on_ray)
    for rows in ("paths", "splits", "labels", "classes", "failed"):
        assert list(getattr(a, rows)) == list(getattr(b, rows)), rows
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-5)  # as executions differ
    with h5py.File(local) as fa, h5py.File(on_ray) as fb:
        assert fa.attrs["config_key"] == fb.attrs["config_key"]
        assert fa["files/sha256"][:].tolist() == fb["files/sha256"][:].tolist()


def test_the_ray_engine_writes_the_local_engines_cache(cluster, folder, tmp_path):
    local = featx.extract(folder, out=tmp_path / "local.h5", **FAST)
    on_ray = featx.extract(folder, out=tmp_path / "ray.h5", runtime=ray_runtime(), **ON_RAY)
    assert (on_ray.n_images, on_ray.n_failed) == (local.n_images, local.n_failed) == (16, 1)
    assert on_ray.failed == local.failed and "notes.jpg" in on_ray.failed[0][0]
    assert_same_cache(local.path, on_ray.path)
    assert not Path(f"{on_ray.path}.partial").exists()

    again = featx.extract(folder, out=tmp_path / "ray.h5", runtime=ray_runtime(), **ON_RAY)
    assert again.up_to_date and again.n_extracted == 0


def test_a_killed_ray_run_resumes_and_ends_with_the_same_cache(cluster, tmp_path, monkeypatch):
    data = write_folder(tmp_path / "many", {"": 10})
    cmd = [sys.executable, "-m", "featx", "extract", str(data), "--out", "killed.h5", "--weights", "none",
           "--engine", "ray", "--address", cluster, "--workers", "1", "--batch-size", "2",
           "--block-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = Path("killed.h5.partial")
    try:
        freeze_at_first_shard(proc, partial)  # then killed, as a lost driver is
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not Path("killed.h5").exists()

    killed = kill_an_actor_at_the_first_rows(monkeypatch)
    resumed = featx.extract(data, out="killed.h5", runtime=ray_runtime(), **ON_RAY)
    assert killed and 0 < resumed.n_reused < 20 and resumed.n_images == 20
    assert not partial.exists()
    assert_same_cache(featx.extract(data, out="local.h5", **FAST).path, resumed.path)


def kill_an_actor_at_the_first_rows(monkeypatch) -> list[int]:
    """As the next run's first rows reach the driver, kill -9 one of its actors (a lost worker,
    which Ray restarts and gives its block again); return the pid, once killed."""
    from featx.cache.partial import Partial

    add, killed = Partial.add, []

    def add_and_kill(self, *args):
        if not killed:
            actors = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and
                      b"MapWorker" in _cmdline(d)]
            os.kill(actors[0], signal.SIGKILL)
            killed.append(actors[0])
        add(self, *args)

    monkeypatch.setattr(Partial, "add", add_and_kill)
    return killed


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # gone since listed
        return b""


def test_a_folder_scored_on_ray_is_scored_as_locally(cluster, folder, tmp_path):
    bundle = featx.fit_head(featx.extract(folder, out=tmp_path / "local.h5", **FAST).path).bundle
    local = featx.score(folder, bundle, out=tmp_path / "local.csv", cache_dir=tmp_path / "l",
                        runtime=FAST["runtime"])
    on_ray = featx.score(folder, bundle, out=tmp_path / "ray.csv", cache_dir=tmp_path / "r",
                         runtime=ray_runtime(), engine="ray")
    ours, theirs = _rows(local.csv), _rows(on_ray.csv)
    assert [r[:3] + r[-1:] for r in ours] == [r[:3] + r[-1:] for r in theirs]  # path, predicted, label, error
    np.testing.assert_allclose(_probabilities(ours), _probabilities(theirs), atol=2e-6)
    assert on_ray.metrics.pop("loss") == pytest.approx(local.metrics.pop("loss"), rel=1e-5)
    assert on_ray.metrics == local.metrics and on_ray.n_failed == 1


def _rows(csv_path: Path) -> list[list[str]]:
    with open(csv_path, newline="") as f:
        return list(csv.reader(f))[1:]


def _probabilities(rows: list[list[str]]) -> np.ndarray:
    return np.array([[float(p or "nan") for p in r[3:-1]] for r in rows])


def test_without_ray_the_ray_engine_says_how_to_install_it(monkeypatch, folder, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(featx.ConfigError, match=r"^`engine` ray needs Ray, which is not installed: "
                                                r"pip install 'featx\[ray\]'$"):
        featx.extract(folder, engine="ray", **{k: v for k, v in ON_RAY.items() if k != "engine"})
    assert main(["extract", str(folder), "--engine", "ray", "--weights", "none"]) == 1
    # Ray's log thread, from a cluster an earlier test stopped, may still print its own lines here
    said = [line for line in capsys.readouterr().err.splitlines() if "(pid=" not in line]
    assert said == ["featx: error: --engine ray needs Ray, which is not installed: pip install 'featx[ray]'"]


def test_a_ray_pool_is_sized_to_the_cluster_or_refused_in_one_line(cluster, folder):
    with pytest.raises(featx.ConfigError, match=r"^the Ray cluster has room for 1 actor\(s\) of 2 CPU "
                                                r"and 0 GPU now, not 3: lower `workers`"):
        featx.extract(folder, runtime=ray_runtime(3), weights="none",
                      engine=featx.RayEngine(cpus_per_worker=2))
    with pytest.raises(featx.ConfigError, match=r"^`device` cuda asked for, but the Ray cluster has no "
                                                r"GPU: use `device` cpu$"):
        featx.extract(folder, runtime=featx.Runtime(device="cuda"), weights="none", engine="ray")
