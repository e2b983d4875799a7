"""slimkit compress never loses a result: --out validated before any work, --overwrite required to replace,
all outputs staged and moved in together (Ctrl-C while writing keeps the previous model and reports),
no stale model beside a new one; recipe-order and dtype mistakes are refused up front."""
import os
import signal

import numpy as np
import pytest
import torch

import slimkit.compress
from slimkit.cli import main
from slimkit.compress import RecipeError, parse_recipe
from slimkit.errors import SlimkitError
from slimkit.models import ModelInfo, _registry

from _tiny_resnet import tiny_model


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    info = ModelInfo("_test_tiny_out", lambda: tiny_model(), (3, 8, 8), description="output test model")
    monkeypatch.setitem(_registry._REGISTRY, "_test_tiny_out", info)


def _argv(out, recipe="fold", *extra):
    return ["compress", "--model", "_test_tiny_out", "--recipe", recipe, "--out", str(out), "--latency-batches", "",
            "--no-progress", *extra]


def _no_work(monkeypatch):
    calls = []
    monkeypatch.setattr(slimkit.compress, "compress", lambda *a, **k: calls.append(1))
    return calls


def test_int8_must_be_last_is_a_parse_error():
    with pytest.raises(RecipeError, match="int8 must be the last pass .*got int8,fold"):
        parse_recipe("int8,fold")
    with pytest.raises(RecipeError, match="int8 must be the last pass"):
        parse_recipe([{"int8": {}}, "fold"])
    assert [c.name for c in parse_recipe("fold,int8")] == ["fold", "int8"]


def test_float64_into_int8_is_one_clear_error():
    pytest.importorskip("onnxruntime")
    with pytest.raises(SlimkitError, match=r"int8: needs a float32 model and inputs, got \['torch.float64'\]"):
        slimkit.compress.compress(tiny_model().double(), torch.randn(1, 3, 8, 8, dtype=torch.float64), "int8",
                                  progress=False, latency_batches=())


def test_bad_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    calls = _no_work(monkeypatch)
    (tmp_path / "a-file").write_text("")
    assert main(_argv(tmp_path / "a-file")) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.md").write_text("earlier")
    assert main(_argv(tmp_path / "old")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "already holds results (report.md); pass --overwrite" in err
    assert calls == []  # refused before compressing anything


@pytest.mark.usefixtures("sigint_raises")
def test_sigint_while_writing_keeps_the_previous_results(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(out, "fold")) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert "model.pt2" in before and "report.md" in before
    real_save = torch.export.save

    def interrupted(ep, f, **kw):  # Ctrl-C halfway through writing the new model
        real_save(ep, f, **kw)
        with open(f, "r+b") as fh:
            fh.truncate(64)
        signal.raise_signal(signal.SIGINT)  # to this thread: os.kill(pid) can be handled late under load

    monkeypatch.setattr(torch.export, "save", interrupted)
    assert main(_argv(out, "lowrank(tradeoff=0.5)", "--overwrite")) == 130
    after = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert after == before  # the previous model and the reports describing it, byte for byte
    monkeypatch.undo()
    back = slimkit.compress.load(out / "model.pt2")
    assert back(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_overwrite_replaces_and_leaves_no_stale_model(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    assert main(_argv(out, "fold")) == 0
    assert (out / "model.pt2").exists()
    assert main(_argv(out, "int8", "--overwrite")) == 0
    names = sorted(os.listdir(out))
    assert "model.onnx" in names and "model.pt2" not in names  # no stale eager model beside the int8 one
    assert "model.onnx" in (out / "report.md").read_text()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert slimkit.compress.load(out / "model.onnx")(torch.from_numpy(x)).shape == (2, 4)
