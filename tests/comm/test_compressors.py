"""Compressor properties: unbiasedness, exact byte counts, error feedback conservation, every
bit-width, NaN/Inf handling, registry and spec parsing, state round-trips."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import slimkit.comm as comm
from slimkit.comm.packing import packed_nbytes

ALL = ["identity", "qsgd", "terngrad", "lpc", "sign", "topk", "ecq", "mqgrad"]


def test_registry_lists_every_compressor_and_rejects_unknown():
    assert comm.list_compressors() == sorted(ALL + ["auto"])  # auto: a per-bucket policy, tested in test_auto
    with pytest.raises(ValueError, match="unknown compressor 'nope'; known compressors: auto, ecq"):
        comm.create_compressor("nope")
    with pytest.raises(ValueError, match=r"got unknown option\(s\) \['bitz'\]"):
        comm.create_compressor("qsgd", bitz=3)


def test_parse_compressor_specs():
    c = comm.parse_compressor("ecq(bits=2, beta=0.5, norm=max)")
    assert (c.bits, c.beta, c.inner.norm) == (2, 0.5, "max")
    assert comm.parse_compressor(" qsgd ").bits == 4
    assert comm.parse_compressor("mqgrad(actions=(2, 4))").actions == (2, 4)
    for bad in ["ecq(2)", "ecq(bits=)", "1abc", "ecq(bits=f(x))"]:
        with pytest.raises(ValueError):
            comm.parse_compressor(bad)


@pytest.mark.parametrize("name", ALL)
def test_every_compressor_roundtrips_with_bounded_error(name):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    c = comm.create_compressor(name)
    c.bind(0)
    y, nbytes = c.roundtrip(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert 0 < nbytes <= 4 * x.numel() + 16
    # relative error bound by kind: exact for identity, small for >= 4 bits, bounded for the rest
    bound = {"identity": 0.0, "mqgrad": 0.2, "lpc": 0.3}.get(name, 6.0)
    assert float((y - x).norm() / x.norm()) <= bound


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(1, 700), bucket=st.sampled_from([0, 7, 64, 512]),
       norm=st.sampled_from(["l2", "max"]), coding=st.sampled_from(["dense", "auto"]))
def test_qsgd_any_bitwidth_exact_bytes_and_grid(bits, n, bucket, norm, coding):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    c = comm.create_compressor("qsgd", bits=bits, norm=norm, bucket_size=bucket, coding=coding)
    payload = c.compress(x)
    nb = max(1, math.ceil(n / (bucket or n)))
    if coding == "dense":
        assert payload.numel() == 2 + 4 * nb + packed_nbytes(n, bits)
    else:  # auto never sends more than dense
        assert payload.numel() <= 2 + 4 * nb + packed_nbytes(n, bits)
    y = c.decompress(payload, n)
    # every decoded value is on the grid of its bucket: |y| <= bucket norm
    size = bucket or n
    for b in range(nb):
        xs, ys = x[b * size:(b + 1) * size], y[b * size:(b + 1) * size]
        scale = xs.norm() if norm == "l2" else xs.abs().max()
        assert float(ys.abs().max()) <= float(scale) * (1 + 1e-5) + 1e-6


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), seed=st.integers(0, 1000), norm=st.sampled_from(["l2", "max"]))
def test_qsgd_is_unbiased(bits, seed, norm):
    x = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    c = comm.create_compressor("qsgd", bits=bits, norm=norm, bucket_size=16, seed=seed)
    draws = 2000  # one call: buckets of 16 never straddle copies, so each copy is an independent draw
    mean = c.roundtrip(x.repeat(draws))[0].view(draws, 64).mean(0)
    # per-coordinate variance <= (grid step * scale)^2 / 4; allow 5 standard errors
    scale = x.view(4, 16).norm(dim=1) if norm == "l2" else x.view(4, 16).abs().amax(1)
    step = 2.0 / (c.levels(bits) - 1)
    tol = 5 * (step * scale.repeat_interleave(16) / 2) / math.sqrt(draws)
    assert bool(((mean - x).abs() <= tol + 1e-6).all())


def test_lpc_clips_inside_quantizer_and_is_unbiased_for_clipped_value():
    x = torch.tensor([10.0] + [0.1] * 99)
    c = comm.create_compressor("lpc", bits=8, clip=2.0, bucket_size=0)
    theta = min(10.0, 2.0 * float(x.pow(2).mean().sqrt()))
    mean = torch.stack([c.roundtrip(x)[0] for _ in range(500)]).mean(0)
    assert float(mean.abs().max()) <= theta * (1 + 1e-5)
    assert torch.allclose(mean, x.clamp(-theta, theta), atol=0.02)


@settings(max_examples=30, deadline=None)
@given(inner=st.sampled_from(["qsgd", "sign", "topk", "terngrad"]), steps=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_error_feedback_conserves_what_was_not_sent(inner, steps, seed):
    # alpha = beta = 1: sum of gradients == sum of what was sent + the error buffer
    g = torch.Generator().manual_seed(seed)
    opts = {"bits": 2} if inner == "qsgd" else {}
    c = comm.create_compressor("ecq", alpha=1.0, beta=1.0, inner=inner, seed=seed, **opts)
    segs = [("a", 30), ("b", 20)]
    total_g, total_q = torch.zeros(50), torch.zeros(50)
    for _ in range(steps):
        grad = torch.randn(50, generator=g)
        q = c.decompress(c.compress(grad, segs), 50)
        total_g += grad
        total_q += q
    err = torch.cat([c.errors["a"], c.errors["b"]])
    torch.testing.assert_close(total_q + err, total_g, rtol=1e-5, atol=1e-4)


def test_ecq_decay_and_compensation_follow_the_formula():
    c = comm.create_compressor("ecq", bits=2, alpha=0.5, beta=0.25, seed=3)
    g1, g2 = torch.randn(40), torch.randn(40)
    q1 = c.decompress(c.compress(g1), 40)
    h1 = g1 - q1
    torch.testing.assert_close(c.errors["_flat"], h1)
    c2 = comm.create_compressor("qsgd", bits=2, norm="max", seed=3)
    c2.load_state_dict(c.inner.state_dict())
    expected_q2 = c2.decompress(c2.compress(g2 + 0.5 * h1), 40)
    q2 = c.decompress(c.compress(g2), 40)
    torch.testing.assert_close(q2, expected_q2)
    torch.testing.assert_close(c.errors["_flat"], 0.25 * h1 + (g2 - q2))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_raises_or_is_skipped(name, bad):
    x = torch.randn(100)
    x[7] = bad
    with pytest.raises(FloatingPointError, match="NaN/Inf values out of 100"):
        comm.create_compressor(name).compress(x)
    c = comm.create_compressor(name, nonfinite="skip")
    y, _ = c.roundtrip(x)
    assert torch.equal(y, torch.zeros(100)) and c.skipped >= 1


@pytest.mark.parametrize("name", ALL)
def test_state_dict_restores_the_random_stream_and_buffers(name):
    a = comm.create_compressor(name, seed=5)
    a.bind(1)
    x = torch.randn(600)
    a.compress(x, [("w", 600)]) if name in ("ecq", "mqgrad") else a.compress(x)
    b = comm.create_compressor(name, seed=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.compress(x * 2), b.compress(x * 2))


def test_mqgrad_policy_changes_bits_and_is_deterministic():
    def run():
        c = comm.create_compressor("mqgrad", interval=2, epsilon=0.3, seed=1)
        for t in range(60):
            c.observe_loss(2.0 / (1 + t) + 0.01 * (t % 3))
        return c.decisions

    d1, d2 = run(), run()
    assert d1 == d2 and len(d1) == 30
    assert len(set(d1)) > 1 and set(d1) <= {2, 4, 8, 16}


def test_bad_options_have_clear_messages():
    with pytest.raises(ValueError, match="bits must be an int in 1..16"):
        comm.create_compressor("qsgd", bits=17)
    with pytest.raises(ValueError, match="norm must be 'l2' or 'max'"):
        comm.create_compressor("qsgd", norm="l1")
    with pytest.raises(ValueError, match="alpha and beta must lie in"):
        comm.create_compressor("ecq", alpha=2)
    with pytest.raises(ValueError, match="initial_bits=3 is not one of"):
        comm.create_compressor("mqgrad", initial_bits=3)
    with pytest.raises(ValueError, match="ratio must be in"):
        comm.create_compressor("topk", ratio=0)


def test_state_from_another_rank_keeps_shared_parts_and_drops_per_rank_ones():
    a = comm.create_compressor("mqgrad", seed=2)
    a.bind(0)
    a.compress(torch.randn(300), [("w", 300)])
    for t in range(25):
        a.observe_loss(1.0 / (t + 1))
    b = comm.create_compressor("mqgrad", seed=2)
    b.load_state_dict(a.state_dict())
    b.reset_rank_state(1)  # what CommState.load_state_dict does when the checkpoint came from rank 0
    assert b.quantizer.errors == {} and b.decisions == a.decisions and b.policy.q == a.policy.q
    c = comm.create_compressor("mqgrad", seed=2)
    c.bind(1)
    assert torch.equal(b.quantizer.inner.generator.get_state(), c.quantizer.inner.generator.get_state())


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(1, 3000), bucket=st.sampled_from([0, 7, 64, 512]),
       coding=st.sampled_from(["dense", "sparse", "auto"]), spread=st.sampled_from([0.0, 1.0, 4.0]))
def test_own_decoded_values_equal_decoding_the_payload(bits, n, bucket, coding, spread):
    # compress() keeps its own decoded values for the hook; they must be bit-identical to what the
    # peers decode from the payload, for dense and sparse payloads alike
    if coding == "sparse" and bits == 1:
        coding = "dense"
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(spread) * 1e-3
    for c in (comm.create_compressor("qsgd", bits=bits, bucket_size=bucket, coding=coding, seed=n),
              comm.create_compressor("ecq", bits=bits, bucket_size=bucket, coding=coding, seed=n)):
        for _ in range(2):
            payload = c.compress(x, [("a", n)])
            assert torch.equal(c.decompress_own(payload, n), c.decompress(payload, n))


@pytest.mark.parametrize("coding", ["dense", "sparse"])
def test_wire_format_version_is_checked_and_version_0_still_decodes(coding):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * torch.rand(1000).pow(4)
    c = comm.create_compressor("qsgd", bits=4, coding=coding)
    payload = c.compress(x)
    assert int(payload[0]) >> 4 == 1  # version 1 in the high bits of the first header byte
    old = payload.clone()
    old[0] &= 15  # the same layout as written before the version existed
    assert torch.equal(c.decompress(old, 1000), c.decompress(payload, 1000))
    future = payload.clone()
    future[0] = (2 << 4) | (int(payload[0]) & 15)
    with pytest.raises(ValueError, match="wire format version 2; this slimkit reads versions 0..1"):
        c.decompress(future, 1000)


@pytest.mark.parametrize("spec", ["qsgd(bits=4, coding='dense')", "qsgd(bits=2, norm='max')", "qsgd(bits=3, bucket_size=7)",
                                  "qsgd(bits=12, bucket_size=64)", "qsgd(bits=4, bucket_size=0)", "lpc(bits=4)",
                                  "ecq(bits=2)", "ecq(bits=4, coding='dense', bucket_size=0)", "terngrad"])
def test_payload_does_not_depend_on_the_chunk_size(spec, monkeypatch):
    # the chunk loop (many chunks, a padded last one, buckets larger than a chunk) sends exactly what
    # one big chunk sends: the noise is one sequential stream
    import slimkit.comm.qsgd as qsgd_mod

    x = torch.randn(5003, generator=torch.Generator().manual_seed(1)) * torch.rand(5003).pow(3)
    outs = []
    for chunk in (qsgd_mod.CHUNK, 64, 1024):
        monkeypatch.setattr(qsgd_mod, "CHUNK", chunk)
        c = comm.parse_compressor(spec)
        c.bind(3)
        p1, p2 = c.compress(x, [("a", 3000), ("b", 2003)]), c.compress(2 * x, [("a", 3000), ("b", 2003)])
        outs.append((p1, p2, c.decompress(p2, 5003)))
    for p1, p2, y in outs[1:]:
        assert torch.equal(p1, outs[0][0]) and torch.equal(p2, outs[0][1]) and torch.equal(y, outs[0][2])


@pytest.mark.parametrize("spec", ["qsgd(bits=4, coding='dense')", "qsgd(bits=4, coding='sparse')", "ecq(bits=2)", "qsgd(bits=16)"])
def test_decompress_into_a_reused_buffer_equals_a_fresh_one(spec):
    x = torch.randn(2000, generator=torch.Generator().manual_seed(2)) * torch.rand(2000).pow(4)
    c = comm.parse_compressor(spec)
    payload = c.compress(x)
    buf = torch.full((2000,), float("nan"))
    y = c.decompress(payload, 2000, out=buf)
    assert y.data_ptr() == buf.data_ptr() and torch.equal(buf, c.decompress(payload, 2000))


def test_nan_in_a_later_chunk_skips_with_the_noise_rewound(monkeypatch):
    import slimkit.comm.qsgd as qsgd_mod

    monkeypatch.setattr(qsgd_mod, "CHUNK", 512)
    x = torch.randn(4096)
    x[3000] = float("nan")  # found in the 6th chunk, after 5 chunks drew noise
    a = comm.create_compressor("qsgd", nonfinite="skip", seed=4)
    b = comm.create_compressor("qsgd", nonfinite="skip", seed=4)
    assert torch.equal(a.compress(x), b.compress(torch.zeros(4096))) and a.skipped == 1
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_ecq_error_buffer_is_updated_in_place_and_survives_a_layout_change():
    # alpha = beta = 1: what was sent plus the error equals the gradients, across a bucket rebuild
    c = comm.create_compressor("ecq", bits=2, alpha=1.0, beta=1.0, seed=7)
    g = torch.Generator().manual_seed(7)
    total_g, total_q = torch.zeros(50), torch.zeros(50)
    layouts = [[("a", 30), ("b", 20)]] * 3 + [[("b", 20), ("a", 30)]] * 2
    for segs in layouts:
        grad = torch.randn(50, generator=g)
        if segs[0][0] == "b":  # the same parameters in the other order: the flat bucket is permuted
            flat = torch.cat([grad[30:], grad[:30]])
            q = c.decompress(c.compress(flat, segs), 50)
            q = torch.cat([q[20:], q[:20]])
        else:
            q = c.decompress(c.compress(grad, segs), 50)
        total_g += grad
        total_q += q
    err = torch.cat([c.errors["a"], c.errors["b"]])
    torch.testing.assert_close(total_q + err, total_g, rtol=1e-5, atol=1e-4)
    assert len(c._bufs) == 1  # the old layout's buffer was dropped
