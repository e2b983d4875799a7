"""profile and demo validate their outputs and inputs before any work: --json that is a folder or
unwritable, inputs too large for memory, an unknown --device, a demo folder holding earlier results."""
import json
import os

import pytest

import slimkit.profile
from slimkit.cli import main


@pytest.fixture
def no_profiling(monkeypatch):
    calls = []
    monkeypatch.setattr(slimkit.profile, "profile", lambda *a, **k: calls.append(1))
    return calls


@pytest.mark.parametrize("argv,msg", [
    (["--json", "{tmp}"], "is a folder; give a file path such as"),
    (["--device", "banana"], "unknown device 'banana'; expected auto, cpu, cuda, cuda:N or mps"),
    (["--input", "100000000000x1x28x28"], "needs 292062.8 GiB for the inputs alone"),
    (["--input", "1x1x28x28", "--batch-sizes", "1,100000000000"], "at batch 100000000000 needs"),
])
def test_profile_refuses_before_any_work(tmp_path, capsys, no_profiling, argv, msg):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["profile", "--model", "lenet5", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert no_profiling == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_profile_unwritable_json_is_refused_before_work(capsys, no_profiling):
    assert main(["profile", "--model", "lenet5", "--json", "/proc/self/x/p.json"]) == 2
    assert "--json" in capsys.readouterr().err and no_profiling == []


def test_profile_json_is_written_whole(tmp_path):
    path = tmp_path / "sub" / "p.json"
    assert main(["profile", "--model", "lenet5", "--batch-sizes", "none", "--no-progress", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["macs"] == 416_520
    assert os.listdir(path.parent) == ["p.json"]


def test_demo_refuses_a_folder_with_earlier_results(tmp_path, capsys, monkeypatch):
    import slimkit.demo as demo

    ran = []
    monkeypatch.setattr(demo, "STEPS", [("noop", lambda ctx: ran.append(ctx.out_dir))])
    (tmp_path / "profile.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "already holds results (profile.json); pass --overwrite" in capsys.readouterr().err and ran == []
    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--overwrite"]) == 0 and len(ran) == 1
