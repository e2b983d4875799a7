import copy

import pytest
import torch

pytest.importorskip("onnxruntime")

from slimkit.compress.base import CompressContext  # noqa: E402
from slimkit.compress.int8 import Int8Config, OrtModule, int8, onnx_weight_bytes  # noqa: E402
from slimkit.errors import SlimkitError  # noqa: E402

from _tiny_resnet import snr_db, tiny_data, tiny_model  # noqa: E402


def test_ort_fp32_matches_eager():
    model = tiny_model()
    ort = OrtModule.from_torch(model, torch.randn(1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(ort(x), model(x), rtol=1e-4, atol=1e-5)


def test_int8_close_and_smaller():
    model = tiny_model()
    data = tiny_data(n_batches=4)
    q = int8(model, torch.randn(1, 3, 8, 8), Int8Config(), CompressContext(data=data, progress=False))
    assert isinstance(q, OrtModule) and q.kind == "int8"
    x = torch.cat([b[0] for b in data])
    ref, out = model(x), q(x)
    assert snr_db(ref, out) > 20.0  # lossy: minimum signal-to-noise ratio
    fp32 = onnx_weight_bytes(OrtModule.from_torch(model, x[:1]).onnx_bytes)
    assert onnx_weight_bytes(q.onnx_bytes) < 0.6 * fp32  # int8 weights + per-channel scales
    q2 = copy.deepcopy(q)  # the session is rebuilt from the ONNX bytes
    torch.testing.assert_close(q2(x), out, rtol=0, atol=0)


def test_int8_rejects_ort_input_and_wrong_arity():
    model = tiny_model()
    q = OrtModule.from_torch(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(SlimkitError, match="int8 must be the last pass"):
        int8(q, torch.randn(1, 3, 8, 8), Int8Config(), None)
    with pytest.raises(SlimkitError, match="expects 1 inputs .*got 2"):
        q(torch.randn(1, 3, 8, 8), torch.randn(1))


def test_reduce_range_only_on_x86_without_vnni(tmp_path, monkeypatch):
    from slimkit.compress import int8 as mod

    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(mod.platform, "machine", lambda: "x86_64")
    info.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    assert mod.needs_reduce_range(str(info)) is True
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    assert mod.needs_reduce_range(str(info)) is False
    assert mod.needs_reduce_range(str(tmp_path / "missing")) is True
    monkeypatch.setattr(mod.platform, "machine", lambda: "aarch64")
    assert mod.needs_reduce_range(str(info)) is False


class _GlobalPoolNet(torch.nn.Module):
    """The Hugging Face EfficientNet head: a global pool written as AvgPool2d(kernel > input, ceil_mode)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Linear(16, 4)
        self.pool = torch.nn.AvgPool2d(64, ceil_mode=True)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_int8_fused_pool_that_outputs_a_constant_is_caught():
    from slimkit.compress import compress
    from slimkit.errors import CompressionCheckError

    torch.manual_seed(0)
    model, x = _GlobalPoolNet().eval(), torch.randn(8, 3, 4, 4)
    data = [(x, torch.zeros(8, dtype=torch.long))]
    # at ORT_ENABLE_ALL, QLinearAveragePool turns the pool into a constant: every input, one output
    with pytest.raises(CompressionCheckError, match="constant"):
        compress(model, x[:1], "int8(level=all)", data=data, latency_batches=(), progress=False)
    ctx = CompressContext(data=data, progress=False)
    q = int8(model, x[:1], Int8Config(), ctx)
    assert ctx.extras["int8"]["tried"]["all"]["constant"] and q.level != "all"
    assert "QLinearAveragePool" in ctx.extras["int8"]["dropped_fused_ops"]
    assert snr_db(model(x), q(x)) > 20.0
    res = compress(model, x[:1], "int8", data=data, latency_batches=(), progress=False)
    assert "rel. error" in res.report.passes[0].check


def test_int8_refuses_a_data_dependent_branch():
    from slimkit.onnx_runtime import ExportError

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ExportError, match="data-dependent"):
        int8(Branchy().eval(), torch.ones(1, 4), Int8Config(), None)


class _Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 3)

    def forward(self, input_ids):
        return self.fc(torch.relu(self.emb(input_ids)).mean(1))


def test_int8_keeps_token_ids_integer_and_takes_keyword_inputs():
    torch.manual_seed(0)
    model = _Tokens().eval()
    ids = torch.randint(0, 50, (8, 6))
    data = [({"input_ids": ids}, torch.zeros(8, dtype=torch.long))]
    q = int8(model, {"input_ids": ids[:1]}, Int8Config(), CompressContext(data=data, progress=False))
    assert q.names == ["input_ids"] and "int64" in q.session.session.get_inputs()[0].type
    assert snr_db(model(ids), q(input_ids=ids)) > 15.0


def test_int8_report_counts_the_source_graph_and_times_an_ort_fp32_baseline():
    from slimkit.compress import compress
    from slimkit.profile.sizes import weight_bytes

    model, data = tiny_model(), tiny_data(n_batches=2)
    res = compress(model, data[0][0][:1], "int8", data=data, latency_batches=(1,), latency_repeats=2, progress=False)
    rep = res.report
    # the ORT session cannot be MAC-counted: it runs the graph counted before it, with the same weights
    assert rep.after.macs == rep.before.macs and rep.after.params == rep.before.params
    assert rep.after.weight_bytes == weight_bytes(res.model) == onnx_weight_bytes(res.model.onnx_bytes)
    assert set(rep.latency) == {"before@b1", "after@b1", "before_ort_fp32@b1"}
