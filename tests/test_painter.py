"""The pictures' helper process: it draws what this process would, byte for byte, without this
process importing matplotlib; where it has died the pictures are drawn here; it never outlives
the command, drawn or not."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featx.reporting import painter

PICTURES = {
    "confusion_val.png": ("confusion_matrix_png", dict(matrix=np.array([[5, 1], [2, 7]]),
                                                       classes=["ants", "bees $x$"], title="val")),
    "history.png": ("history_png", dict(history=[{"epoch": 0, "train_loss": 0.7, "val_loss": 0.69},
                                                 {"epoch": 1, "train_loss": 0.4, "val_loss": 0.5}],
                                        title="curves")),
    "search.png": ("search_png", dict(trials=[{"params": {"C": c}, "val_accuracy": a, "val_loss": v}
                                              for c, a, v in ((0.01, 0.7, 0.6), (0.1, 0.8, 0.5),
                                                              (1.0, 0.75, 0.55))],
                                      chosen={"C": 0.1}, title="search")),
}

# A command as the command line runs one: a fresh process, the helper started first.
COMMAND = """
import json, pickle, sys
from pathlib import Path
from featx.reporting import painter
folder, pictures = Path(sys.argv[1]), pickle.loads(Path(sys.argv[2]).read_bytes())
with painter.ahead():
    helper = painter._helper
    if sys.argv[3] == "dead":
        helper.process.kill()
        helper.process.wait()
    if sys.argv[3] != "unused":
        painter.Drawing(pictures).into(folder)
print(json.dumps(dict(imported="matplotlib" in sys.modules, helper_folder=helper.folder.exists(),
                      helper_ended=helper.process.returncode is not None)))
"""


def _command(tmp_path, how: str) -> dict:
    (tmp_path / "out").mkdir()
    (tmp_path / "pictures.pickle").write_bytes(pickle.dumps(PICTURES))
    done = subprocess.run([sys.executable, "-c", COMMAND, str(tmp_path / "out"),
                           str(tmp_path / "pictures.pickle"), how],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_helper_draws_the_pictures_this_process_would(tmp_path):
    said = _command(tmp_path, "alive")
    assert not said["imported"]  # drawn by the helper: this process never imported matplotlib
    assert said["helper_ended"] and not said["helper_folder"]
    here = tmp_path / "here"
    painter._draw(here, PICTURES)
    for name in PICTURES:
        assert (tmp_path / "out" / name).read_bytes() == (here / name).read_bytes(), name


@pytest.mark.parametrize("how", ["dead", "unused"])
def test_a_dead_helper_is_drawn_without_and_none_outlives_the_command(tmp_path, how):
    said = _command(tmp_path, how)
    assert said["helper_ended"] and not said["helper_folder"]
    if how == "dead":  # drawn here instead
        assert said["imported"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(PICTURES)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_the_helper_ends_with_a_killed_command():
    command = subprocess.Popen([sys.executable, "-c", "import time\nfrom featx.reporting import painter\n"
                                "with painter.ahead():\n    helper = painter._helper\n"
                                "    print(helper.process.pid, helper.folder, flush=True)\n"
                                "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    pid, folder = command.stdout.readline().split()
    command.kill()
    command.wait()
    shutil.rmtree(folder)  # a killed command's temporary folder stays, as any process's would
    helper, give_up = Path(f"/proc/{pid}/stat"), time.monotonic() + 5
    while helper.exists() and helper.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < give_up, "the helper outlived its killed command"
        time.sleep(0.05)
