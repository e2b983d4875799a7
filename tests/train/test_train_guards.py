"""Training guards: a NaN/Inf loss stops the run (the last good checkpoint intact) or is skipped and counted;
the default learning rate does not diverge on the demo task; out_dir is never clobbered; --resume refuses
other settings before writing anything; bad flags are one line, also under --nproc."""
import csv
import os
import types

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import slimkit.data
from slimkit.cli import main
from slimkit.errors import CheckpointError, OutputError, TrainingError
from slimkit.models import ModelInfo, _registry
from slimkit.train import TrainConfig, fit, load_checkpoint
from slimkit.cli import train as train_cli

BASE = dict(batch_size=32, lr=0.05, optimizer="sgd", progress=False, seed=3)


def _data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return TensorDataset(x, (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long())


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


class _PoisonedAfter(Dataset):
    """Sample ``index`` turns NaN from read ``after`` on: a data/numerics fault in the middle of a run."""

    def __init__(self, data, after, index=5):
        self.data, self.after, self.index, self.reads = data, after, index, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        x, y = self.data[i]
        return (torch.full_like(x, float("nan")) if i == self.index and self.reads > self.after else x), y


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    data = _PoisonedAfter(_data(), after=128)  # epoch 1 is clean, the poison appears in epoch 2
    with pytest.raises(TrainingError, match=r"non-finite loss \(loss nan\) at epoch 2, step \d+; training stopped and "
                                            r".*checkpoint.pt \(epoch 1\) is intact"):
        fit(_model(), data, None, TrainConfig(epochs=3, out_dir=str(tmp_path), **BASE))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "model.pt").exists()
    assert [int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == [1]


def test_skip_drops_the_bad_steps_and_counts_them(tmp_path):
    data = _PoisonedAfter(_data(), after=128)
    res = fit(_model(), data, None, TrainConfig(epochs=3, out_dir=str(tmp_path), on_nonfinite="skip", **BASE))
    assert [r["nonfinite_steps"] for r in res.history] == [0, 1, 1]  # one batch holds sample 5, once per epoch
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert all(r["train_loss"] == r["train_loss"] for r in res.history)  # no NaN in the averages
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["nonfinite_steps"] for r in rows] == ["0", "1", "1"]


def test_default_learning_rate_does_not_diverge_on_the_demo_task():
    # lenet5 on the embedded digits with every training default (the old SGD lr 0.1 went NaN in epoch 2).
    from slimkit.train.build import build_model

    splits = slimkit.data.load_dataset("digits?resize=28")
    torch.manual_seed(0)
    res = fit(build_model("lenet5", splits), splits.train, splits.test, TrainConfig(epochs=3, progress=False))
    losses = [r["train_loss"] for r in res.history]
    assert res.config.lr == 0.01  # resolved from the optimizer default and saved with the run
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0]
    assert sum(r["nonfinite_steps"] for r in res.history) == 0


def test_out_dir_is_never_clobbered(tmp_path):
    fit(_model(), _data(), None, TrainConfig(epochs=1, out_dir=str(tmp_path), **BASE))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(OutputError, match=r"already holds results \(checkpoint.pt, config.yaml, metrics.csv, "):
        fit(_model(), _data(), None, TrainConfig(epochs=1, out_dir=str(tmp_path), **BASE))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    fit(_model(), _data(), None, TrainConfig(epochs=1, out_dir=str(tmp_path), overwrite=True, log_format="csv",
                                             **BASE))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.yaml", "metrics.csv", "model.pt"]  # no stale jsonl


@pytest.mark.parametrize("change,diff", [
    (dict(optimizer="adam"), "optimizer: 'sgd' -> 'adam'"),
    (dict(lr=0.1), "lr: 0.05 -> 0.1"),
    (dict(meta={"data": "other.npz"}), "data: 'toy' -> 'other.npz'"),
])
def test_resume_refuses_other_settings_before_writing(tmp_path, change, diff):
    fit(_model(), _data(), None, TrainConfig(epochs=1, out_dir=str(tmp_path), meta={"data": "toy"}, **BASE))
    files = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    cfg = {**BASE, "meta": {"data": "toy"}, **change}
    with pytest.raises(CheckpointError, match=f"resume: .*checkpoint.pt was written with other settings \\({diff}\\)"):
        fit(_model(), _data(), None, TrainConfig(epochs=2, out_dir=str(tmp_path), resume=True, **cfg))
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == files  # nothing was written


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture
def fake_zoo(monkeypatch):
    monkeypatch.setitem(_registry._REGISTRY, "tiny-guard", ModelInfo("tiny-guard", lambda num_classes=2: _model(),
                                                                     (1, 6, 6)))
    monkeypatch.setattr(slimkit.data, "load_dataset", lambda spec: types.SimpleNamespace(
        train=_data(), test=_data(32, 1), num_classes=2, input_size=(1, 6, 6), meta={}), raising=False)


def _train(tmp_path, *extra):
    return main(["train", "--model", "tiny-guard", "--data", "toy", "--epochs", "1", "--batch-size", "32",
                 "--out", str(tmp_path), "--no-progress", *extra])


def test_cli_resume_with_another_optimizer_is_one_line_and_writes_nothing(fake_zoo, tmp_path, capsys):
    assert _train(tmp_path) == 0
    files = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    capsys.readouterr()
    assert _train(tmp_path, "--resume", "--optim", "adam", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "optimizer: 'sgd' -> 'adam'" in err
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == files
    assert _train(tmp_path) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert _train(tmp_path, "--overwrite") == 0


@pytest.mark.parametrize("argv,msg", [
    (["--optim-opts", "banana=3"], "optimizer 'sgd' rejects them"),
    (["--optim-opts", "momentum=-1"], "--optim-opts {'momentum': -1}: Invalid momentum value: -1"),
    (["--device", "banana"], "unknown device 'banana'; expected auto, cpu, cuda, cuda:N or mps"),
    (["--on-nonfinite", "ignore"], "unknown on_nonfinite 'ignore'; expected one of: raise, skip"),
    (["--lr", "nan"], "lr must be > 0, got nan"),
    (["--memory-budget", "1GB", "--memory-pack", "int4"], "memory_pack must be None, 'bf16' or 'fp16', got 'int4'"),
])
def test_cli_bad_settings_are_one_line(fake_zoo, tmp_path, capsys, argv, msg):
    assert _train(tmp_path / "o", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "o").exists()  # refused before the output folder was made


def test_cli_bad_settings_under_nproc_fail_before_torchrun(fake_zoo, tmp_path, capsys, monkeypatch):
    launched = []
    monkeypatch.setattr(train_cli, "_relaunch", lambda *a, **k: launched.append(a) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for bad in (["--compress", "nosuch(bits=2)"], ["--compress", "ecq(alpha=nan)"], ["--optim-opts", "banana=3"]):
        assert _train(tmp_path / "o", "--nproc", "2", *bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("slimkit train: error: "), err
    assert launched == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.pt").write_bytes(b"earlier")
    assert _train(tmp_path / "full", "--nproc", "2") == 2 and "pass --overwrite" in capsys.readouterr().err
    assert launched == []
