"""Issue 11, case 5: norms and scales cannot overflow on finite input, up to float32 max, for every
compressor, for error feedback state and for the hook's average of several ranks' payloads."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import slimkit.comm as comm
from slimkit.comm.hook import _average

FMAX = torch.finfo(torch.float32).max
ALL = ["identity", "qsgd", "terngrad", "lpc", "sign", "topk", "ecq", "mqgrad"]
SPECS = ALL + ["qsgd(norm='max')", "qsgd(bits=1)", "qsgd(bits=16)", "ecq(inner='sign')", "ecq(inner='lpc')"]


def _big(seed, n, exp):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** exp
    return x.clamp(-FMAX, FMAX).float()  # finite by construction, up to float32 max


@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(SPECS), seed=st.integers(0, 10_000), n=st.integers(1, 1500),
       exp=st.sampled_from([0, 19, 20, 30, 38, 39]))
def test_finite_input_up_to_float32_max_gives_finite_output(spec, seed, n, exp):
    x = _big(seed, n, exp)
    x[seed % n] = FMAX if seed % 2 else -FMAX  # at least one value at the very edge
    c = comm.parse_compressor(spec)
    c.bind(0)
    parts = []
    for _ in range(3):  # stateful compressors: the error buffers must stay finite too
        payload = c.compress(x, [("w", n)])
        y = c.decompress(payload, n)
        assert torch.isfinite(y).all(), spec
        parts.append(y)
    for buf in getattr(getattr(c, "quantizer", c), "errors", {}).values():
        assert torch.isfinite(buf).all()
    avg = _average(parts, len(parts))  # the hook's mean of the ranks' decoded payloads
    assert torch.isfinite(avg).all()


@pytest.mark.parametrize("scale", [2e19, 1e30, 3e38])
def test_qsgd_l2_norm_of_huge_gradient_is_exact_not_nan(scale):
    # before: x.norm() squared 2e19 to inf, every decoded value became NaN
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1)).clamp(-1, 1) * scale
    c = comm.create_compressor("qsgd", bits=8, norm="l2", bucket_size=512)
    draws = torch.stack([c.roundtrip(x)[0] for _ in range(50)])
    assert torch.isfinite(draws).all()
    rel = float(((draws.double().mean(0) - x.double()).norm() / x.double().norm()))
    assert rel < 0.2  # unbiased: the mean of 50 draws is close


def test_lpc_rms_of_huge_gradient_is_finite():
    x = torch.full((600,), 1e30)
    y, _ = comm.create_compressor("lpc", bits=4).roundtrip(x)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=0)


def test_average_divides_before_summing():
    parts = [torch.full((5,), FMAX)] * 4
    torch.testing.assert_close(_average(parts, 4), torch.full((5,), FMAX))


@pytest.mark.parametrize("spec", ["qsgd", "qsgd(norm='max')", "lpc", "ecq", "ecq(inner='lpc')", "qsgd(bits=16)"])
def test_overflow_handling_holds_across_chunks(spec, monkeypatch):
    # the chunked encoder finds overflowing norms and g + alpha * h per chunk (or on a careful rerun)
    import slimkit.comm.qsgd as qsgd_mod

    monkeypatch.setattr(qsgd_mod, "CHUNK", 256)
    x = _big(3, 3000, 30)
    x[2500:2600] = _big(4, 100, 39)  # a late chunk at float32 max
    x[2600] = -FMAX
    c = comm.parse_compressor(spec)
    c.bind(0)
    for _ in range(3):
        y = c.decompress(c.compress(x, [("w", 3000)]), 3000)
        assert torch.isfinite(y).all()
    for buf in getattr(c, "errors", {}).values():
        assert torch.isfinite(buf).all()
