"""LPC-SVRG / ALPC-SVRG on the embedded digits (binary): objective goes down, quantized runs track
the full-precision one with fewer bits, and the bit count is exact."""
import pytest
import torch

from slimkit.train.lpc_svrg import SVRGConfig, digits_binary, logistic_l1_objective, lpc_svrg


@pytest.fixture(scope="module")
def data():
    A, y = digits_binary()
    return A[:600], y[:600]


def test_quantized_svrg_tracks_full_precision_with_fewer_bits(data):
    A, y = data
    cfg = dict(epochs=4, inner=20, workers=3, seed=1)
    full = lpc_svrg(A, y, SVRGConfig(bits=None, **cfg))
    quant = lpc_svrg(A, y, SVRGConfig(bits=3, **cfg))
    assert full.objective[-1] < full.objective[0] - 0.2  # log(2) = 0.693 at x = 0
    assert abs(quant.objective[-1] - full.objective[-1]) < 2e-3
    d = A.shape[1]
    # exact count: per epoch 3 float32 anchors + 20*3 payloads of (2 header + 4 scale + ceil(65*3/8)) bytes
    per_epoch = 3 * 32 * d + 20 * 3 * 8 * (2 + 4 + (d * 3 + 7) // 8)
    assert quant.bits == [e * per_epoch for e in range(5)]
    assert full.bits[-1] / quant.bits[-1] > 5


def test_accelerated_variant_goes_lower_in_the_same_epochs(data):
    A, y = data
    cfg = dict(bits=4, epochs=4, inner=20, workers=3, seed=1)
    plain = lpc_svrg(A, y, SVRGConfig(**cfg))
    acc = lpc_svrg(A, y, SVRGConfig(momentum=0.5, **cfg))
    assert acc.objective[-1] < plain.objective[-1]
    assert acc.objective[-1] == pytest.approx(logistic_l1_objective(acc.x, A, y, 1e-3), rel=1e-12)


def test_bad_input(data):
    A, y = data
    with pytest.raises(ValueError, match=r"labels y must be -1 or \+1"):
        lpc_svrg(A, (y > 0).double(), SVRGConfig(epochs=1))
    with pytest.raises(ValueError, match="expected A"):
        lpc_svrg(A[0], y, SVRGConfig(epochs=1))


def test_old_comm_path_is_a_warning_shim(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "slimkit.comm.lpc_svrg", raising=False)
    with pytest.warns(FutureWarning, match="moved to slimkit.train.lpc_svrg"):
        old = importlib.import_module("slimkit.comm.lpc_svrg")
    assert old.lpc_svrg is lpc_svrg and old.SVRGConfig is SVRGConfig
