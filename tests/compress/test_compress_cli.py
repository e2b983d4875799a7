import os

import numpy as np
import pytest
import torch

from slimkit.cli import main
from slimkit.compress import load
from slimkit.models import ModelInfo, _registry

from _tiny_resnet import tiny_model


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    """Registers the test model for each test only, so the zoo-wide tests never see it."""
    info = ModelInfo("_test_tiny_b", lambda: tiny_model(), (3, 8, 8), description="tiny ResNet test model")
    monkeypatch.setitem(_registry._REGISTRY, "_test_tiny_b", info)


@pytest.fixture()
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(path, x=rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8), y=np.arange(60) % 4)
    return str(path)


def test_cli_writes_model_and_reports(tmp_path, npz, capsys):
    out = tmp_path / "run"
    rc = main(["compress", "--model", "_test_tiny_b", "--data", f"npz:{npz}?layout=hwc", "--recipe", "pq(k=4,sub_dim=2,steps=20)",
               "--out", str(out), "--test-fraction", "0.34", "--k", "5", "--latency-batches", "1,2", "--no-progress"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["model.pt2", "pareto.png", "recipe.yaml", "report.html", "report.json", "report.md"]
    md = (out / "report.md").read_text()
    assert "| before |" in md and "`pq(sub_dim=2,k=4,steps=20)`" in md and "after@b2" in md
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 3 and "data:image/png;base64," in page
    assert (out / "recipe.yaml").read_text() == "recipe:\n- pq:\n    sub_dim: 2\n    k: 4\n    steps: 20\n"
    assert load(out / "model.pt2")(torch.randn(3, 3, 8, 8)).shape == (3, 4)


def test_cli_data_free_and_bad_recipe(tmp_path, capsys):
    rc = main(["compress", "--model", "_test_tiny_b", "--recipe", "pq(k=4,ec_iters=0)", "--out", str(tmp_path / "a"),
               "--latency-batches", "", "--no-progress"])
    assert rc == 0 and (tmp_path / "a" / "model.pt2").exists() and not (tmp_path / "a" / "pareto.png").exists()
    rc = main(["compress", "--model", "_test_tiny_b", "--recipe", "pq(k=", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "Grammar: recipe := pass" in err and not (tmp_path / "b").exists()


def test_cli_bad_data_spec(tmp_path, capsys):
    rc = main(["compress", "--model", "_test_tiny_b", "--data", "nosuchset:x", "--recipe", "pq", "--out", str(tmp_path)])
    assert rc == 2 and "nosuchset" in capsys.readouterr().err
