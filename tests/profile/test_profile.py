"""slimkit.profile(...) end to end on tiny nets: counts exact, latency only sane (never speed)."""
import json
import math

import pytest
import torch
import torch.nn as nn

import slimkit
from slimkit.errors import ShapeError
from slimkit.profile import Profile, compare_latency, measure_latency, resize_batch

from _profile_nets import Nested, WithCdist, conv_net

FAST = dict(batch_sizes=(1, 3), threads=("1",), warmup=1, repeats=3, progress=False)


def _check_row(row):
    for key in ("median_ms", "p90_ms", "p25_ms", "p75_ms", "min_ms", "max_ms", "throughput"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["min_ms"] <= row["p25_ms"] <= row["median_ms"] <= row["p75_ms"] <= row["p90_ms"] <= row["max_ms"]
    assert row["throughput"] == pytest.approx(row["batch_size"] * 1e3 / row["median_ms"])
    assert len(row["loadavg"]) == 3


def test_module_is_callable_and_exports_profile_class():
    assert callable(slimkit.profile)
    assert slimkit.profile.Profile is Profile


def test_profile_counts_bytes_and_latency_rows():
    net = Nested()
    prof = slimkit.profile(net, torch.randn(5, 3, 8, 8), **FAST)
    assert prof.macs == 4608 and prof.flops == 2 * 4608 and prof.total() == 4608
    assert prof.params == 112 + 8 + 725
    # params fp32 + BN running mean/var fp32 + num_batches_tracked int64
    assert prof.weight_bytes == (112 + 8 + 725) * 4 + 2 * 4 * 4 + 8
    # conv out and BN out live together (4*6*6 fp32 each) while BN runs
    assert prof.peak_activation_bytes == 2 * 4 * 6 * 6 * 4
    assert prof.input_shapes == [[1, 3, 8, 8]]  # counts are for batch 1
    assert prof.by_operator() == {"aten.convolution": 3888, "aten.addmm": 720}
    assert prof.unsupported_ops == {}
    assert [(r["runtime"], r["threads"], r["batch_size"]) for r in prof.latency] == [("eager", "1", 1), ("eager", "1", 3)]
    for row in prof.latency:
        _check_row(row)
    assert net.training  # mode restored


def test_by_module_depth_and_sum():
    prof = slimkit.profile(Nested(), torch.randn(1, 3, 8, 8), batch_sizes=(), progress=False)
    top = prof.by_module(depth=1)
    assert list(top) == ["", "block", "head"]
    assert top["block"]["macs"] + top["head"]["macs"] == top[""]["macs"] == prof.macs
    assert sum(v["params"] for k, v in top.items() if k) == prof.params
    assert prof.by_module()["block.1"] == {"type": "BatchNorm2d", "params": 8, "macs": 0}
    assert prof.latency == []


def test_unsupported_ops_reach_the_profile_and_table():
    prof = slimkit.profile(WithCdist(), torch.randn(2, 4, 3), batch_sizes=(), progress=False)
    assert prof.unsupported_ops == {"aten._cdist_forward": 1}
    assert "aten._cdist_forward x1" in prof.table()


def test_json_round_trip(tmp_path):
    prof = slimkit.profile(conv_net(), torch.randn(1, 3, 8, 8), **FAST)
    path = tmp_path / "p.json"
    text = prof.to_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(text) == prof.to_dict()
    assert set(data) == {"name", "input_shapes", "input_dtypes", "device", "macs", "params", "weight_bytes",
                         "peak_activation_bytes", "modules", "operators", "op_calls", "unsupported_ops", "latency",
                         "environment", "schema_version"}
    assert set(data["latency"][0]) >= {"runtime", "threads", "batch_size", "median_ms", "p90_ms", "iqr_ms",
                                       "throughput", "loadavg"}
    back = Profile.from_json(path)
    assert back.to_dict() == prof.to_dict() and back.macs == 4608
    with pytest.raises(ValueError, match="missing keys"):
        Profile.from_dict({"name": "x"})


def test_table_states_the_mac_convention():
    prof = slimkit.profile(conv_net(), torch.randn(1, 3, 8, 8), **FAST)
    text = str(prof)
    assert "1 MAC = 1 multiply-accumulate" in text and "FLOPs = 2 x MACs" in text
    assert "Conv2d" in text and "median ms" in text and "load avg" in text


def test_wrong_shape_raises_shape_error_naming_the_shape():
    with pytest.raises(ShapeError, match="1x3x9x9"):
        slimkit.profile(conv_net(), torch.randn(1, 3, 9, 9), batch_sizes=(), progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown runtime"):
        slimkit.profile(conv_net(), torch.randn(1, 3, 8, 8), runtime="tvm", progress=False)
    with pytest.raises(ValueError, match="positive integer or 'all'"):
        slimkit.profile(conv_net(), torch.randn(1, 3, 8, 8), threads=("zero",), progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        slimkit.profile(lambda x: x, torch.randn(1, 3, 8, 8))


def test_resize_batch_repeats_samples():
    x, ids, flag = torch.arange(6.0).reshape(2, 3), torch.tensor([[1, 2]]), "keep"
    big = resize_batch((x, ids, flag), 5)
    assert big[0].shape == (5, 3) and torch.equal(big[0][2], x[0]) and torch.equal(big[0][3], x[1])
    assert big[1].shape == (5, 2) and big[2] == "keep"
    assert resize_batch(x, 1)[0].shape == (1, 3)
    with pytest.raises(ShapeError, match="batch dimension"):
        resize_batch(torch.tensor(1.0), 2)


def test_measure_and_compare_latency():
    net = conv_net().eval()
    x = torch.randn(2, 3, 8, 8)
    stats = measure_latency(net, x, warmup=1, repeats=4, threads=1, batch_size=2)
    assert stats.n == 4 and stats.p90_ms >= stats.median_ms > 0 and stats.iqr_ms >= 0
    assert stats.throughput == pytest.approx(2e3 / stats.median_ms)
    calls = {"a": 0, "b": 0}

    def counting(name):
        def fn(*inputs):
            calls[name] += 1
        return fn

    res = compare_latency({"a": counting("a"), "b": counting("b")}, x, warmup=2, repeats=5)
    assert calls == {"a": 7, "b": 7} and set(res) == {"a", "b"}
    assert all(r.n == 5 and r.p90_ms >= r.median_ms for r in res.values())
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(net, x, repeats=0)


def test_onnxruntime_runtime_matches_eager():
    pytest.importorskip("onnxruntime")
    from slimkit.profile import make_runner

    net, x = conv_net().eval(), torch.randn(3, 3, 8, 8)
    ort = make_runner(net, x[:1], "onnxruntime", threads=1)
    torch.testing.assert_close(ort(x), net(x).detach(), rtol=1e-4, atol=1e-5)  # fp32, same graph
    prof = slimkit.profile(net, x, runtime="eager,onnxruntime", **FAST)
    assert [r["runtime"] for r in prof.latency] == ["eager", "eager", "onnxruntime", "onnxruntime"]
    for row in prof.latency:
        _check_row(row)


def test_integer_inputs_pass_through():
    net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    prof = slimkit.profile(net, torch.tensor([[1, 2, 3]]), **FAST)
    assert prof.macs == 12 * 2 and prof.input_dtypes == ["int64"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile():
    net = conv_net()
    prof = slimkit.profile(net, torch.randn(1, 3, 8, 8), device="cuda", **FAST)
    assert prof.device.startswith("cuda") and prof.macs == 4608
    assert all(r["threads"] == "-" and r["cuda_peak_bytes"] >= 0 for r in prof.latency)
    assert next(net.parameters()).device.type == "cpu"  # the caller's model did not move


@pytest.mark.slow
def test_compile_runtime():
    # torch.compile with inductor on CPU needs a C++ compiler and ~30 s: slow tier only
    prof = slimkit.profile(conv_net(), torch.randn(1, 3, 8, 8), runtime="compile", **FAST)
    assert [r["runtime"] for r in prof.latency] == ["compile", "compile"]
    for row in prof.latency:
        _check_row(row)
