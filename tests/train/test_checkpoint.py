"""Checkpoint files: atomic writes, clear errors for missing/corrupt files, exact RNG round trip."""
import os
import random

import numpy as np
import pytest
import torch

from slimkit.errors import CheckpointError
from slimkit.train.checkpoint import FORMAT, get_rng_state, load_checkpoint, save_checkpoint


def _state(value=1.0):
    return {"model": {"w": torch.full((3,), value)}, "optimizer": {}, "epoch": 1, "step": 4, "rng": get_rng_state()}


def test_save_then_load_round_trips(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", _state(2.5))
    state = load_checkpoint(path)
    assert state["format"] == FORMAT
    assert state["epoch"] == 1 and state["step"] == 4
    torch.testing.assert_close(state["model"]["w"], torch.full((3,), 2.5), rtol=0, atol=0)
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_checkpoint_raises(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", _state())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_foreign_file_raises(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a slimkit training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    bad = dict(_state())
    del bad["optimizer"]
    save_checkpoint(tmp_path / "partial.pt", bad)
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        load_checkpoint(tmp_path / "partial.pt")


def test_failed_write_keeps_previous_file(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", _state(1.0))
    before = open(path, "rb").read()
    bad = _state(9.0)
    bad["extra_state"] = {"plugin": lambda: None}  # cannot be pickled: torch.save fails mid-write
    with pytest.raises(Exception):
        save_checkpoint(path, bad)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ck.pt"]
    torch.testing.assert_close(load_checkpoint(path)["model"]["w"], torch.ones(3), rtol=0, atol=0)


def test_rng_state_round_trip_through_file(tmp_path):
    from slimkit.train.checkpoint import set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gauss in numpy's state
    save_checkpoint(tmp_path / "ck.pt", _state())
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.randn(3), expected[1])
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_planted_payloads_in_checkpoints_never_run(tmp_path):
    from slimkit.models import load_checkpoint as load_weights

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "slimkit.train/1", "model": {"w": torch.zeros(1)}, "optimizer": _Payload(marker),
                "epoch": 1, "step": 1, "rng": {}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)  # --resume
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_weights(torch.nn.Linear(1, 1), evil)  # --checkpoint
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live
    assert marker.exists()
