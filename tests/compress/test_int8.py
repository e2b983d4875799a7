import copy

import pytest
import torch

pytest.importorskip("onnxruntime")

from slimkit.compress.base import CompressContext  # noqa: E402
from slimkit.compress.int8 import Int8Config, OrtModule, int8, onnx_weight_bytes  # noqa: E402
from slimkit.errors import SlimkitError  # noqa: E402

from _toys_b import snr_db, tiny_data, tiny_model  # noqa: E402


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
    with pytest.raises(SlimkitError, match="expects 1 inputs, got 2"):
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
