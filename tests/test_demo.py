"""`slimkit demo --quick`: trains on the embedded digits set, profiles, compresses, within accuracy bounds."""
import json

import pytest
import torch

from slimkit.cli import main


@pytest.mark.timeout(180)
def test_demo_quick_trains_profiles_and_compresses(tmp_path, capsys):
    rc = main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    acc_line = next(line for line in out.splitlines() if "held-out accuracy" in line)
    accuracy = float(acc_line.split("held-out accuracy ")[1].split()[0])
    assert accuracy >= 0.80, out
    assert "MACs" in out
    steps = ("[1/5] data", "[2/5] model", "[3/5] train", "[4/5] profile", "[5/5] compress")
    assert [s for s in steps if s not in out] == []
    assert json.loads((tmp_path / "profile.json").read_text())["macs"] == 416_520  # LeNet-5 at 28x28, by hand
    assert (tmp_path / "train" / "metrics.csv").is_file() and (tmp_path / "train" / "checkpoint.pt").is_file()
    report = json.loads((tmp_path / "compress_report.json").read_text())
    assert "prune(macs=0.5," in report["recipe"]
    assert "| after |" in (tmp_path / "compress_report.md").read_text()  # the Markdown twin is written too
    # The compressed model is a plain torch.export archive with at most ~half the MACs.
    small = torch.export.load(str(tmp_path / "compressed.pt2")).module()
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert report["after"]["macs"] <= 0.55 * 416_520
    assert report["after"]["accuracy"] >= 0.70  # few-shot (K=5) recovery after removing half the MACs, quick mode


def test_demo_steps_are_extensible(tmp_path, monkeypatch):
    import slimkit.demo as demo

    seen = []
    monkeypatch.setattr(demo, "STEPS", demo.STEPS[:2] + [("extra", lambda ctx: seen.append(ctx.model))])
    ctx = demo.run_demo(str(tmp_path), quick=True, progress=False)
    assert len(seen) == 1 and seen[0] is ctx.model
    assert ctx.example_inputs.shape == (1, 1, 28, 28)  # digits resized to what lenet5 takes
    assert set(ctx.timings) == {"data", "model", "extra"}
