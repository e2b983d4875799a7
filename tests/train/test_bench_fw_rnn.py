"""The FW benchmark's counting runs resume exactly from their checkpoint (also mid FW cycle)."""
import argparse
import importlib.util
import os
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fw_rnn", ROOT / "benchmarks/train/bench_fw_rnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("cfg", ["adam lr=0.001 clip=1", "fw-adam K=10"])
def test_count_run_resumes_exactly(tmp_path, cfg):
    b = _bench()
    curves = []
    for interrupt in (False, True):
        a = argparse.Namespace(max_batches=17, hidden=8, batch=4, eval_every=3, ckpt_every=6,
                               runs=str(tmp_path / str(interrupt)))
        if interrupt:  # deadline already past: checkpoint at the first evaluation (mini-batch 3, mid K=10 cycle)
            assert b.count_run("adding-50", cfg, 0, a, b.make_task("adding-50", a, 0), deadline=time.time()) is None
            assert os.path.exists(b._ckpt_path(a, "adding-50", cfg, 0))
        r = b.count_run("adding-50", cfg, 0, a, b.make_task("adding-50", a, 0))
        assert not os.path.exists(b._ckpt_path(a, "adding-50", cfg, 0))
        assert [c[0] for c in r["curve"]] == [3, 6, 9, 12, 15, 17]
        curves.append([c[1] for c in r["curve"]])
    assert curves[0] == curves[1]
