"""`slimkit train`: settings precedence, files, resume through the CLI, one-line errors."""
import csv
import types

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

import slimkit.data
from slimkit.cli import main
from slimkit.models import ModelInfo, _registry
from slimkit.cli import train as train_cli


def _tiny(num_classes=2):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))


def _splits(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long()
    return TensorDataset(x, y)


@pytest.fixture
def fake_zoo(monkeypatch):
    """A tiny registered model and a fake data set, so the CLI is tested without the real zoo/data."""
    monkeypatch.setitem(_registry._REGISTRY, "tiny-test", ModelInfo("tiny-test", _tiny, (1, 6, 6)))
    seen = []

    def load_dataset(spec):
        seen.append(spec)
        if spec != "toy":
            raise ValueError(f"unknown data set {spec!r}; known: toy")
        return types.SimpleNamespace(train=_splits(), test=_splits(64, 1), num_classes=2, input_size=(1, 6, 6))

    monkeypatch.setattr(slimkit.data, "load_dataset", load_dataset, raising=False)
    return seen


def test_cli_trains_and_writes_outputs(fake_zoo, tmp_path, capsys):
    rc = main(["train", "--model", "tiny-test", "--data", "toy", "--epochs", "3", "--batch-size", "16",
               "--lr", "0.1", "--optim", "sgd", "--optim-opts", "momentum=0.8,nesterov=true",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert fake_zoo == ["toy"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trained tiny-test on toy for 3 epochs: held-out accuracy ")
    assert float(line.split("accuracy ")[1].split(";")[0]) >= 0.7
    saved = yaml.safe_load(open(tmp_path / "config.yaml"))
    assert saved["optimizer_options"] == {"momentum": 0.8, "nesterov": True}
    assert saved["meta"]["model"] == "tiny-test" and saved["meta"]["data"] == "toy"
    assert [int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == [1, 2, 3]
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_saved_config_reruns_and_resumes_exactly(fake_zoo, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--model", "tiny-test", "--data", "toy", "--batch-size", "16", "--no-progress"]
    assert main(["train", *common, "--epochs", "2", "--out", str(straight)]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(split)]) == 0
    # The saved config.yaml is a valid --config; flags given on the command line win over it.
    assert main(["train", "--config", str(split / "config.yaml"), "--epochs", "2", "--resume", "--no-progress"]) == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert yaml.safe_load(open(split / "config.yaml"))["epochs"] == 2


def test_yaml_values_are_overridden_by_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": "m1", "epochs": 7, "lr": 0.3, "optimizer_options": {"momentum": 0.5}}))
    parser = __import__("argparse").ArgumentParser()
    train_cli.add_arguments(parser)
    s = train_cli.resolve_settings(parser.parse_args(["--config", str(cfg), "--epochs", "2", "--optim-opts", "momentum=0"]))
    assert s == {"model": "m1", "epochs": 2, "lr": 0.3, "optimizer_options": {"momentum": 0}, "meta": {}}


@pytest.mark.parametrize("argv,msg", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "tiny-test", "--optim", "nope"], "unknown optimizer 'nope'; known optimizers: "),
    (["--model", "tiny-test", "--loss", "l1"], "unknown loss 'l1'"),
    (["--model", "tiny-test", "--data", "nope"], "unknown data set 'nope'"),
    (["--model", "tiny-test", "--optim-opts", "momentum"], "bad --optim-opts item 'momentum'"),
    (["--model", "tiny-test", "--memory-budget", "lots"], "bad memory size 'lots'"),
    (["--model", "tiny-test", "--config", "/nonexistent.yaml"], "no such YAML file"),
    (["--epochs", "1"], "needs --model"),
])
def test_bad_input_is_one_line_error(fake_zoo, argv, msg, capsys, tmp_path):
    rc = main(["train", *argv, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("slimkit train: error: ") and msg in err


def test_resume_without_checkpoint_is_an_error(fake_zoo, tmp_path, capsys):
    rc = main(["train", "--model", "tiny-test", "--data", "toy", "--out", str(tmp_path), "--resume", "--no-progress"])
    assert rc == 2 and "no checkpoint at" in capsys.readouterr().err


def test_nproc_relaunches_under_torchrun(fake_zoo, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("slimkit.train.launch.run_forwarding", lambda cmd, env=None: calls.append(cmd) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(["train", "--model", "tiny-test", "--data", "toy", "--nproc", "2", "--epochs", "1", "--resume",
               "--compress", "ecq(bits=2)", "--out", str(tmp_path)])
    assert rc == 0
    cmd = calls[0]
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    rest = cmd[cmd.index("train") + 1:]
    assert "--nproc" not in rest
    assert rest == ["--model", "tiny-test", "--data", "toy", "--epochs", "1", "--compress", "ecq(bits=2)",
                    "--out", str(tmp_path), "--resume"]


@pytest.mark.parametrize("text, expected", [
    ("momentum=0.8,nesterov=true", {"momentum": 0.8, "nesterov": True}),
    ("momentum=0.8, nesterov=True", {"momentum": 0.8, "nesterov": True}),
    ("betas=(0.9, 0.99), eps=1e-8", {"betas": (0.9, 0.99), "eps": 1e-8}),  # tuples and 1e-8: new in the grammar
    ("shrink=average,name='a,b',num_draws=none", {"shrink": "average", "name": "a,b", "num_draws": None}),
    ("", {}),
])
def test_option_flags_use_the_recipe_grammar(text, expected, recwarn):
    from slimkit.registry import parse_spec

    assert train_cli.parse_options(text) == expected
    assert parse_spec(f"sgd({text})") == ("sgd", expected)  # the same reading as --optim 'sgd(...)'
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("text, expected, advice", [
    ("nesterov=yes", {"nesterov": True}, "write nesterov=true"),
    ("init=~", {"init": None}, "write init=none"),
    ("betas=[0.9]", {"betas": [0.9]}, "write betas=(0.9,)"),
    ("momentum=0.9,", {"momentum": 0.9}, "not in slimkit's option grammar"),
])
def test_option_flags_keep_the_old_yaml_readings_with_a_deprecation_warning(text, expected, advice):
    with pytest.warns(DeprecationWarning, match=advice.replace("(", r"\(").replace(")", r"\)")):
        assert train_cli.parse_options(text, "--optim-opts") == expected


def test_option_flags_name_the_bad_item():
    with pytest.raises(ValueError, match="bad --sampler-opts item 'mixture'.*FIELD=VALUE"):
        train_cli.parse_options("mixture", "--sampler-opts")
    assert train_cli.parse_options({"momentum": 0.5}) == {"momentum": 0.5}  # a YAML mapping in --config stays as is
