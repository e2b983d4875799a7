"""`slimkit profile` run in-process through slimkit.cli.main."""
import json
import textwrap

import pytest
import torch.nn as nn

from slimkit.cli import main
from slimkit.models import _registry

FAST = ["--batch-sizes", "1,2", "--threads", "1", "--warmup", "1", "--repeats", "3", "--no-progress"]


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


@pytest.fixture
def zoo_tiny(monkeypatch):
    # registered for this test only, so registry-wide tests elsewhere never see it
    name = "_profile_cli_tiny"
    monkeypatch.setitem(_registry._REGISTRY, name, _registry.ModelInfo(name, _tiny, (3, 8, 8)))
    return name


def test_zoo_model_default_input(zoo_tiny, capsys):
    assert main(["profile", "--model", zoo_tiny, *FAST]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x8x8" in out and "4,608" in out and "median ms" in out


def test_user_module_function_and_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_profile_net.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test, unlike the CLI's cwd insert
    out_json = tmp_path / "prof.json"
    assert main(["profile", "--model", "my_profile_net:build", "--input", "1x10", "--json", str(out_json), *FAST]) == 0
    data = json.loads(out_json.read_text())
    assert data["macs"] == 10 * 20 + 20 * 3 and data["params"] == 220 + 63
    assert data["weight_bytes"] == 283 * 4 and data["input_shapes"] == [[1, 10]]
    assert [(r["batch_size"], r["threads"]) for r in data["latency"]] == [(1, "1"), (2, "1")]
    assert "wrote" in capsys.readouterr().out


def test_compare_prints_ratios_and_writes_both(zoo_tiny, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_profile_small.py").write_text(
        "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 5))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out_json = tmp_path / "cmp.json"
    rc = main(["profile", "--model", zoo_tiny, "--compare", "my_profile_small:build", "--json", str(out_json), *FAST])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ratio B/A" in out and "measured median ms (eager, 1 thr, batch 1)" in out
    data = json.loads(out_json.read_text())
    macs_row = next(r for r in data["comparison"] if r["metric"] == "MACs (count)")
    # B: conv 2*6*6*27 = 1,944 + linear 360 = 2,304 MACs vs A: 4,608
    assert (macs_row["a"], macs_row["b"], macs_row["ratio"]) == (4608, 2304, 0.5)
    assert len([r for r in data["comparison"] if r["metric"].startswith("measured")]) == 2


def test_unknown_model_lists_names(zoo_tiny, capsys):
    assert main(["profile", "--model", "no_such_net"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no_such_net'" in err and zoo_tiny in err


def test_wrong_input_names_expected_shape(zoo_tiny, capsys):
    assert main(["profile", "--model", zoo_tiny, "--input", "1x3x9x9", "--batch-sizes", "none"]) == 2
    err = capsys.readouterr().err
    assert "expects input Bx3x8x8" in err and "1x3x9x9" in err


def test_bad_input_text_and_missing_input(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_profile_other.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["profile", "--model", "my_profile_other:build"]) == 2
    assert "give the input shape with --input" in capsys.readouterr().err
    assert main(["profile", "--model", "my_profile_other:build", "--input", "1by4"]) == 2
    assert "must look like 1x3x32x32" in capsys.readouterr().err


def test_zoo_lenet5(capsys):
    assert main(["profile", "--model", "lenet5", "--batch-sizes", "none"]) == 0
    assert "lenet5" in capsys.readouterr().out


def test_user_model_checkpoint(tmp_path, monkeypatch, capsys):
    import torch

    (tmp_path / "my_profile_ckpt.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    good, bad = tmp_path / "good.th", tmp_path / "bad.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}}, good)
    torch.save(torch.nn.Linear(5, 2).state_dict(), bad)
    args = ["profile", "--model", "my_profile_ckpt:build", "--input", "1x4", "--batch-sizes", "none"]
    assert main([*args, "--checkpoint", str(good)]) == 0
    assert main([*args, "--checkpoint", str(bad)]) == 2
    assert "does not fit Linear" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(tmp_path / "missing.th")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
