import pytest
import torch

from slimkit.compress import compress, load, save
from slimkit.errors import CheckpointError, SlimkitError

from _toys_b import tiny_data, tiny_model


def test_pt2_round_trip_same_outputs_any_batch(tmp_path):
    model = tiny_model()
    path = save(model, tmp_path / "m.pt2", torch.randn(1, 3, 8, 8))
    back = load(path)
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-6)
    # plain PyTorch can open it without slimkit-specific code
    plain = torch.export.load(str(path)).module()
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)


def test_pq_model_round_trip(tmp_path):
    res = compress(tiny_model(), torch.randn(1, 3, 8, 8), "pq(k=4)", data=tiny_data(), progress=False, latency_batches=())
    back = load(save(res.model, tmp_path / "pq.pt2", torch.randn(2, 3, 8, 8)))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(back(x), res.model(x), rtol=1e-5, atol=1e-6)


def test_onnx_round_trip(tmp_path):
    pytest.importorskip("onnxruntime")
    res = compress(tiny_model(), torch.randn(1, 3, 8, 8), "int8", data=tiny_data(), progress=False, latency_batches=())
    back = load(save(res.model, tmp_path / "q.onnx", None))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(back(x), res.model(x), rtol=0, atol=0)


def test_bad_paths(tmp_path):
    with pytest.raises(SlimkitError, match="is saved as '.pt2'"):
        save(tiny_model(), tmp_path / "m.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load(tmp_path / "missing.pt2")
    bad = tmp_path / "junk.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable torch.export"):
        load(bad)
