"""Where weights come from: a file, the torch hub cache, a download, or nowhere (one clear line)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import featx
from featx.backbones.registry import get_backbone
from featx.backbones.weights import hub_path, is_on_disk, resolve
from featx.cli import main
from featx.util.files import sha256_file


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_and_not_cached_is_one_line_naming_url_and_destination(offline, torch_home, capsys,
                                                                        split_folder):
    spec = get_backbone("resnet18")
    dest = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_path(spec) == dest and not is_on_disk(spec)

    assert main(["extract", str(split_folder), "--backbone", "resnet18", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (f"featx: error: cannot download the resnet18 weights ([Errno -3] Temporary failure "
                   f"in name resolution): download {spec.weights_url} and put it at {dest}, or pass "
                   f"--weights PATH\n")


def test_hub_cache_is_used_before_any_download(offline, torch_home):
    spec = get_backbone("resnet18")
    path = hub_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = torchvision_resnet18_state()
    torch.save(state, path)

    assert is_on_disk(spec)
    w = resolve(spec)
    assert w.path == path and w.sha256 == sha256_file(path)
    model = featx.load_backbone("resnet18")
    assert torch.equal(model.base[0].weight, state["conv1.weight"])


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return get_backbone("resnet18").build().state_dict()


def test_a_local_weights_file_comes_first(tmp_path):
    path = tmp_path / "mine.pt"
    state = torchvision_resnet18_state()
    torch.save(state, path)
    model = featx.load_backbone("resnet18", weights=path)
    assert model.identity().weights_sha256 == sha256_file(path)
    assert model.identity().weights_file == "mine.pt"  # its name only: paths are not shared
    assert torch.equal(model.base[0].weight, state["conv1.weight"])


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(featx.WeightsUnavailableError, match=f"weights file {tmp_path}/nope.pt does "
                                                            f"not exist: pass the path"):
        featx.load_backbone("resnet18", weights=tmp_path / "nope.pt")


def test_random_init_is_seeded_so_its_features_are_reproducible():
    a, b = (featx.load_backbone("mobilenet_v3_small", weights="none") for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
