"""User models on the command line: `--model pkg.module:function`, `path/file.py:function` and `hf:DIR`."""
import json
import sys

import pytest
import torch

from slimkit.cli import main
from slimkit.compress import load

USER_FILE = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

def build():
    torch.manual_seed(0)
    return Net().eval()
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(USER_FILE)
    return path


def test_compress_and_profile_a_model_from_a_file(tmp_path, user_file, capsys):
    out = tmp_path / "run"
    rc = main(["compress", "--model", f"{user_file}:build", "--input", "1x3x8x8", "--recipe", "fold",
               "--out", str(out), "--latency-batches", "", "--no-progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["passes"][0]["check"].startswith("forward ok; lossless")
    x = torch.randn(2, 3, 8, 8)
    assert load(out / "model.pt2")(x).shape == (2, 2)
    rc = main(["profile", "--model", f"{user_file}:build", "--input", "1x3x8x8", "--batch-sizes", "",
               "--json", str(tmp_path / "p.json")])
    assert rc == 0 and json.loads((tmp_path / "p.json").read_text())["macs"] == 8 * 64 * 27 + 16


def test_module_function_spec_and_missing_input(tmp_path, user_file, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    rc = main(["compress", "--model", "my_nets:build", "--recipe", "fold", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--input" in capsys.readouterr().err
    rc = main(["compress", "--model", "my_nets:nope", "--recipe", "fold", "--out", str(tmp_path / "r2")])
    assert rc == 2 and "no callable 'nope'" in capsys.readouterr().err
    sys.modules.pop("my_nets", None)


def test_hf_local_folder_random_and_saved_weights(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3, architectures=["BertForSequenceClassification"])
    folder = tmp_path / "bert"
    cfg.save_pretrained(folder)  # a config only: random weights
    rc = main(["compress", "--model", f"hf:{folder}", "--recipe", "prune(macs=0.6,exclude=classifier)",
               "--out", str(tmp_path / "a"), "--latency-batches", "", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["after"]["macs"] <= 0.61 * rep["before"]["macs"]
    assert any("'logits'" in n for n in rep["notes"])
    saved = load(tmp_path / "a" / "model.pt2")  # keyword-input models: tensors positionally, the logits out
    assert saved(torch.randint(0, 60, (3, 16))).shape == (3, 3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)  # now with weights: they are loaded, not drawn
    rc = main(["profile", "--model", f"hf:{folder}", "--batch-sizes", "", "--json", str(tmp_path / "p.json")])
    assert rc == 0
    from slimkit.models.user import resolve_model

    user = resolve_model(f"hf:{folder}")
    assert torch.equal(user.model.classifier.weight, model.classifier.weight) and user.input_name == "input_ids"
    rc = main(["compress", "--model", f"hf:{tmp_path / 'nothing'}", "--recipe", "fold", "--out", str(tmp_path / "b")])
    assert rc == 2 and "no config.json" in capsys.readouterr().err
