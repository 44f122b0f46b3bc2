"""The command line, through its entry point: exit codes, printed results, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import featx
from featx.cli import EXAMPLES, build_parser, main

from conftest import write_folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_fit_score_end_to_end(capsys, tmp_path):
    data = write_folder(tmp_path / "colours", {"train": 5, "val": 3})
    (data / "val" / "red" / "zero.jpg").write_bytes(b"")
    fast = ("--weights", "none", "--workers", "0", "--no-progress")

    code, out, err = run(capsys, "extract", str(data), *fast)
    assert code == 0
    cache = re.search(r"-> (\S+\.h5)$", out, re.M).group(1)
    assert out.startswith("skipped val/red/zero.jpg: ")
    assert re.search(r"^extracted 16 images \(1 skipped\) in [\d.]+ s, [\d.]+ img/s on "
                     r"[\w+]+ -> cache/colours-",
                     out, re.M)
    assert "featx: " in err and "16 images" not in err  # log lines go to stderr

    code, out, _ = run(capsys, "extract", str(data), *fast)  # tries the skipped file again
    assert (code, out.partition("; precision: ")[0]) == (
        0, f"skipped val/red/zero.jpg: OSError: empty file (0 bytes)\nup to date: {cache} (16 images, "
           f"1 skipped)")

    code, out, _ = run(capsys, "fit-head", cache, "--model", "svm", "-p", "C=0.1")
    bundle = re.search(r"-> (\S+)$", out, re.M).group(1)
    assert code == 0 and bundle == cache.replace(".h5", ".svm")
    assert re.search(r"^val       n=6      accuracy=1.0000 \(95% CI 0.610-1.000\)", out, re.M)
    assert featx.load_bundle(bundle).info["params"] == {"C": 0.1}

    code, out, _ = run(capsys, "score", str(data / "val"), "--model", bundle, *fast[2:],
                       "--out", "scores.csv")
    assert code == 0
    assert re.fullmatch(r"features: extracted 6 images \(1 skipped\) in [\d.]+ s, [\d.]+ img/s on "
                        r"[\w+]+ -> "
                        r"cache/scores/val-efficientnet_lite0-avg-(bfloat16-)?\w{10}\.h5",
                        out.splitlines()[1])
    # scored in the precision the head was fitted on
    assert re.fullmatch(r"precision: \w+ \(the precision the bundle's head was fitted on\)",
                        out.splitlines()[2])
    assert out.splitlines()[3] == "predicted: blue 3, red 3"
    # write_folder's val images repeat its train images byte for byte: the head was fitted on them.
    assert out.splitlines()[4].startswith("the head was fitted on all 6 labelled images (known by")
    assert re.fullmatch(r"all       n=6      accuracy=1.0000 \(95% CI 0.610-1.000\) .* \(not held out\) -> "
                        r"scores.metrics.json", out.splitlines()[5])
    assert out.splitlines()[6:] == ["skipped red/zero.jpg: OSError: empty file (0 bytes)"]
    assert (tmp_path / "scores.csv").is_file() and (tmp_path / "scores.metrics.json").is_file()

    code, out, _ = run(capsys, "score", str(data / "val"), "--model", bundle, *fast[2:],
                       "--out", "scores.csv")
    assert code == 0 and out.splitlines()[1].startswith("features: up to date: cache/scores/val-")


def test_finetune_end_to_end(capsys, tmp_path):
    data = write_folder(tmp_path / "colours", {"train": 4, "val": 2})
    fast = ("--workers", "0", "--no-progress")
    run(capsys, "extract", str(data), "--weights", "none", *fast)
    code, out, _ = run(capsys, "fit-head", next((tmp_path / "cache").glob("*.h5")).as_posix())
    bundle = re.search(r"-> (\S+)$", out, re.M).group(1)

    code, out, err = run(capsys, "finetune", str(data), "--from", bundle, "--epochs", "1",
                         "--unfreeze", "top:1", "--augment", "flip", *fast)
    assert code == 0
    assert "top:1 of 18 blocks unfrozen" in err and "BatchNorm statistics frozen" in err
    assert out.splitlines()[0].split() == ["epoch", "lr", "train", "loss", "train", "acc", "val",
                                           "loss", "val", "acc", "seconds", "img/s"]
    assert re.search(rf"-> {re.escape(bundle)}\.finetuned$", out, re.M)
    code, out, _ = run(capsys, "score", str(data / "val"), "--model", bundle + ".finetuned", *fast)
    assert code == 0 and re.search(r"^all       n=4      accuracy=.* \(not held out\)", out, re.M)

    code, _, err = run(capsys, "finetune", str(data), "--from", bundle, "--augment", "blur", *fast)
    assert code == 1 and err == "featx: error: unknown augmentation blur: choose from crop, flip, " \
                               "rotate, color (or none)\n"


@pytest.mark.parametrize("argv, message", [
    (["extract", "nowhere"], "featx: error: nowhere is not a folder: give the folder that holds one "
                             "subfolder per class\n"),
    (["extract", ".", "--backbone", "vgg61"], "featx: error: unknown backbone 'vgg61': did you mean vgg19, "
                                              "vgg16, vgg13? `featx backbones` lists the 92 available\n"),
    (["fit-head", "missing.h5"], "featx: error: no feature cache at missing.h5: run `featx extract DATA` "
                                 "first; it prints the path\n"),
    (["score", ".", "--model", "nothing"], "featx: error: nothing is not a featx model bundle (no "
                                           "bundle.json): give the folder that `featx fit-head` printed\n"),
])
def test_errors_are_one_line_with_exit_1(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("text, size", [("2G", 2 << 30), ("512m", 512 << 20), ("1.5K", 1536),
                                        ("1000", 1000), ("0", None), ("0.0001K", None), ("2X", None),
                                        ("G", None)])
def test_max_memory_sizes(capsys, text, size):
    if size is not None:
        assert build_parser().parse_args(["fit-head", "x.h5", "--max-memory", text]).max_memory == size
        return
    with pytest.raises(SystemExit) as e:
        main(["fit-head", "x.h5", "--max-memory", text])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"expected a size such as 512M or 2G, got '{text}'" in err


def test_a_bad_param_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit-head", "x.h5", "-p", "C"])
    assert e.value.code == 2 and "expected KEY=VALUE, got 'C'" in capsys.readouterr().err


def test_every_command_has_help_with_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
    commands = re.findall(r"^    (\S+)\s", listed, re.MULTILINE)
    assert set(commands) == set(EXAMPLES)
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert f"example: {EXAMPLES[name]}" in out and f"usage: featx {name}" in out


def test_backbones_lists_dims_inputs_and_weights(capsys):
    code, out, _ = run(capsys, "backbones")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["name", "dim", "input", "resize", "interpolation", "weights", "source"]
    assert lines[1].split()[:6] == ["efficientnet_lite0", "1280", "224", "256", "bicubic", "on"]
    vgg = next(line for line in lines if line.startswith("vgg16 "))
    assert vgg.split()[:6] == ["vgg16", "512", "224", "256", "bilinear", "download"]
    clip = next(line for line in lines if line.startswith("vit_base_patch16_clip_224.openai "))
    assert clip.split()[1:6] == ["768", "224", "248", "bicubic", "download"]
    assert clip.endswith("weights huggingface.co/timm/vit_base_patch16_clip_224.openai")
    assert len(lines) == 1 + len(featx.list_backbones())


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "featx", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"featx {featx.__version__}\n"


def _subparser(name: str):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command, message, printed", [
    ("extract", "`batch_size` must be at least 1, not 0", "--batch-size must be at least 1, not 0"),
    ("extract", "`layers` names a layer twice", "--layer names a layer twice"),
    ("fit-head", "fit the head with `search=False`", "fit the head with --no-search"),
    ("finetune", "run without `resume=True`", "run without --resume"),
    ("finetune", "the `bundle` and `recipe`", "the --from and `recipe`"),
    ("score", "pass `bundle`; see `featx check DATA`", "pass --model; see `featx check DATA`"),
])
def test_the_library_names_parameters_and_the_command_line_their_flags(command, message, printed):
    from featx.cli import in_flags

    assert in_flags(message, _subparser(command)) == printed


def test_a_library_error_reaches_the_terminal_in_flags(capsys):
    with pytest.raises(featx.ConfigError, match="^`batch_size` must be at least 1, not 0$"):
        featx.Runtime(batch_size=0)
    code, _, err = run(capsys, "extract", "nowhere", "--batch-size", "0")
    assert (code, err) == (1, "featx: error: --batch-size must be at least 1, not 0\n")
