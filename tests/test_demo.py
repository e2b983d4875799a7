"""`slimkit demo --quick`: trains on the embedded digits set, reaches a held-out accuracy bound, profiles."""
import json
import os
import types

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import slimkit.data
from slimkit.cli import main
from slimkit.models import ModelInfo, _registry, list_models


def _standin_lenet5(num_classes=10):
    # Used only until the zoo registers lenet5: a LeNet-5-shaped net for 1x28x28 inputs.
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
                               torch.nn.Linear(84, num_classes))


def _standin_digits(spec):
    # Used only until slimkit.data provides load_dataset: the same embedded asset, last 20% of a
    # seeded permutation held out.
    assert spec == "digits"
    d = np.load(os.path.join(os.path.dirname(slimkit.data.__file__), "assets", "digits.npz"))
    x = torch.from_numpy(d["x"]).float().unsqueeze(1) / 16.0
    y = torch.from_numpy(d["y"]).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return types.SimpleNamespace(train=TensorDataset(x[tr], y[tr]), test=TensorDataset(x[te], y[te]),
                                 num_classes=10, input_size=(1, 8, 8))


@pytest.fixture
def zoo_and_data(monkeypatch):
    if "lenet5" not in list_models():
        monkeypatch.setitem(_registry._REGISTRY, "lenet5", ModelInfo("lenet5", _standin_lenet5, (1, 28, 28)))
    if not hasattr(slimkit.data, "load_dataset"):
        monkeypatch.setattr(slimkit.data, "load_dataset", _standin_digits, raising=False)


@pytest.mark.timeout(180)
def test_demo_quick_trains_and_profiles(zoo_and_data, tmp_path, capsys):
    rc = main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    acc_line = next(line for line in out.splitlines() if "held-out accuracy" in line)
    accuracy = float(acc_line.split("held-out accuracy ")[1].split()[0])
    assert accuracy >= 0.80, out
    assert "MACs" in out
    assert [s for s in ("[1/4] data", "[2/4] model", "[3/4] train", "[4/4] profile") if s not in out] == []
    assert json.loads((tmp_path / "profile.json").read_text())["macs"] == 416_520  # LeNet-5 at 28x28, by hand
    assert (tmp_path / "train" / "metrics.csv").is_file() and (tmp_path / "train" / "checkpoint.pt").is_file()


def test_demo_steps_are_extensible(zoo_and_data, tmp_path, monkeypatch):
    import slimkit.demo as demo

    seen = []
    monkeypatch.setattr(demo, "STEPS", demo.STEPS[:2] + [("extra", lambda ctx: seen.append(ctx.model))])
    ctx = demo.run_demo(str(tmp_path), quick=True, progress=False)
    assert len(seen) == 1 and seen[0] is ctx.model
    assert ctx.example_inputs.shape == (1, 1, 28, 28)  # digits resized to what lenet5 takes
    assert set(ctx.timings) == {"data", "model", "extra"}


def test_demo_rejects_bad_epochs(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
