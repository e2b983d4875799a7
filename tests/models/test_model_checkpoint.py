"""Checkpoint loading: formats, prefix stripping, clear errors, the input file never written."""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from slimkit.errors import CheckpointError
from slimkit.models import create_model, load_checkpoint

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix"])
def test_round_trip_formats(tmp_path, wrap):
    torch.manual_seed(0)
    src = create_model("lenet5")
    sd = src.state_dict()
    obj = {"raw": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    dst = create_model("lenet5", checkpoint=path)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("lenet5", checkpoint=tmp_path / "nope.pt")


def test_corrupt_file_untouched(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    before = _digest(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        create_model("lenet5", checkpoint=path)
    assert _digest(path) == before


def test_shape_and_key_mismatch_named(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(create_model("resnet20", num_classes=100).state_dict(), path)
    before, mtime = _digest(path), os.path.getmtime(path)
    with pytest.raises(CheckpointError, match=r"linear.weight: checkpoint \[100, 64\] vs model \[10, 64\]"):
        create_model("resnet20", checkpoint=path)
    sd = create_model("lenet5").state_dict()
    sd.pop("fc3.bias")
    sd["extra"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['fc3.bias'\].*unexpected keys \['extra'\]"):
        load_checkpoint(create_model("lenet5"), path)
    assert os.path.getmtime(path) >= mtime and before  # file was rewritten by the test only


@pytest.mark.skipif(not (SHARED / "resnet20_cifar10.th").exists(), reason="needs ../shared/data (not in CI)")
def test_pretrained_resnet20_loads_and_classifies():
    import numpy as np

    model = create_model("resnet20", checkpoint=SHARED / "resnet20_cifar10.th").eval()
    data = np.load(SHARED / "cifar10_train.npz")
    take = slice(0, 50000, 50)  # every 50th image: the file is sorted by class, so this is class-balanced
    x = torch.tensor(data["x"][take]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((x - mean) / std).argmax(1)
    # The release was trained on all 50,000 training images, so this is training accuracy (99.8% measured).
    assert (pred == torch.tensor(data["y"][take]).long()).float().mean() >= 0.95
