import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from slimkit.compress.base import CompressContext
from slimkit.compress.pq import (PQConfig, PQConv2d, PQLinear, error_correct, kmeans_pq, pack_indices, pq,
                                 response_stats, unpack_indices)

from _tiny_resnet import snr_db, tiny_data, tiny_model


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 300), seed=st.integers(0, 1000))
def test_pack_unpack_round_trip(bits, n, seed):
    a = np.random.default_rng(seed).integers(0, 2 ** bits, size=n).astype(np.uint8)
    packed = pack_indices(a, bits)
    assert packed.size == math.ceil(n * bits / 8)
    assert np.array_equal(unpack_indices(packed, bits, n), a)


def test_packed_indices_keep_their_msb_first_byte_format():
    # the stored form of pq's codes: each index's low `bits` bits, most significant first, bytes filled from
    # their top bit (np.packbits); unlike comm/packing.py, which fills bytes from the low bit
    assert pack_indices(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [0b01101100]
    assert pack_indices(np.array([5, 1, 7], np.uint8), 3).tolist() == [0b10100111, 0b10000000]
    assert pack_indices(np.array([0xAB, 0x0F], np.uint8), 8).tolist() == [0xAB, 0x0F]
    assert unpack_indices(np.array([0b10100111, 0b10000000], np.uint8), 3, 3).tolist() == [5, 1, 7]
    idx = torch.tensor([[[1], [2], [3], [0]]])  # M=1 subspace, out=4, P=1; k=4 codewords: 2 bits
    layer = PQLinear(torch.zeros(1, 4, 1), idx, None, "float16")
    assert layer.packed_state()["packed_indices"].tolist() == [0b01101100]


def test_kmeans_exact_when_few_distinct_vectors():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 1)  # 3 output rows -> 3 sub-vectors per subspace <= k: lossless
    books, idx = kmeans_pq(w, 2, 4, 10, g)
    rebuilt = books[torch.arange(2)[:, None, None], idx].permute(1, 0, 3, 2).reshape(3, 4, 1)
    torch.testing.assert_close(rebuilt, w, rtol=0, atol=0)


def test_storage_bytes_exact():
    books = torch.zeros(4, 16, 2)  # M=4 subspaces of d=2, k=16 -> 4-bit indices
    idx = torch.zeros(4, 10, 9, dtype=torch.long)  # out=10, 3x3 kernel
    conv = torch.nn.Conv2d(8, 10, 3)
    layer = PQConv2d(conv, books, idx, "float16")
    assert layer.bits == 4
    assert layer.storage_bytes() == 4 * 16 * 2 * 2 + math.ceil(4 * 10 * 9 * 4 / 8) + 10 * 4
    assert layer.packed_state()["packed_indices"].numel() == 180


def test_lut_path_equals_dense_fallback():
    torch.manual_seed(0)
    books, idx = torch.randn(3, 8, 4), torch.randint(0, 8, (3, 5, 1))
    bias = torch.randn(5)
    lut = PQLinear(books, idx, bias, "float32", lut=True)
    dense = PQLinear(books, idx, bias, "float32", lut=False)
    x = torch.randn(7, 2, 12)
    torch.testing.assert_close(lut(x), dense(x), rtol=1e-5, atol=1e-5)


def test_error_correction_lowers_response_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 9, generator=g)
    S = torch.randn(512, 8, 9, generator=g)
    S[:, ::4] *= 4  # inputs anisotropic inside each subspace: what response-aware correction exploits
    T = torch.einsum("rcp,ocp->ro", S, w)
    books, idx = kmeans_pq(w, 4, 8, 20, g)
    books2, idx2, e0, e1 = error_correct(books, idx, *response_stats(S, T), iters=3)
    assert e1 < 0.9 * e0

    def direct(b, i):  # the error computed from the rows themselves, not the statistics
        W = b[torch.arange(2)[:, None, None], i].permute(1, 0, 3, 2).reshape(16, 8, 9)
        return float(((T - torch.einsum("rcp,ocp->ro", S, W)) ** 2).sum() / (T ** 2).sum())

    assert e0 == pytest.approx(direct(books, idx), rel=1e-6) and e1 == pytest.approx(direct(books2, idx2), rel=1e-6)


def test_pq_pass_on_tiny_resnet():
    model = tiny_model()
    data = tiny_data()
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(data=data, progress=False)
    plain = pq(model, x[:1], PQConfig(k=8, sub_dim=2, ec_iters=0, steps=0), ctx)
    fixed = pq(model, x[:1], PQConfig(k=8, sub_dim=2, ec_iters=2, steps=0), ctx)
    assert sum(isinstance(m, (PQConv2d, PQLinear)) for m in fixed.modules()) == 5
    assert type(model.conv1) is torch.nn.Conv2d  # input untouched
    ref = model(x)
    assert snr_db(ref, fixed(x)) > 15.0
    assert snr_db(ref, fixed(x)) > snr_db(ref, plain(x))  # error correction helps on the calibration data
    dense = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    packed = sum(m.storage_bytes() for m in fixed.modules() if isinstance(m, (PQConv2d, PQLinear)))
    assert packed < dense / 2.5  # tiny layers: codebooks dominate; real nets compress far more


def test_bad_config():
    with pytest.raises(ValueError, match=r"k must be in \[2, 256\]"):
        PQConfig(k=512)


def test_codebooks_train_and_stay_in_storage_precision():
    model = tiny_model()
    data = tiny_data()
    q = pq(model, data[0][0][:1], PQConfig(k=4, sub_dim=2, ec_iters=0, steps=0), CompressContext(data=data, progress=False))
    X, Y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    ce = torch.nn.functional.cross_entropy
    q.train()
    first = float(ce(q(X), Y))
    for _ in range(20):
        opt.zero_grad()
        loss = ce(q(X), Y)
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        assert float(ce(q(X), Y)) < first
        w = q.conv1.dense_weight()
    assert torch.equal(w, w.half().float())  # forward sees fp16-rounded codebooks: what is stored
    assert q.conv1.packed_state()["codebooks"].dtype == torch.float16


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_codeword_finetune_moves_towards_the_teacher_with_assignments_fixed(tta):
    """With tta=flip the target is the teacher's two-view mean: the fine-tune still brings the outputs closer."""
    from slimkit.compress.matching import kd_loss

    model = tiny_model()
    with torch.no_grad():
        model.fc.weight.mul_(30)  # confident outputs, so the KL to them carries signal
    data = tiny_data(n_batches=4)
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(teacher=model, data=data, progress=False)
    base = pq(model, x[:1], PQConfig(k=2, sub_dim=4, ec_iters=0, steps=0), ctx)
    tuned = pq(model, x[:1], PQConfig(k=2, sub_dim=4, ec_iters=0, steps=80, lr=0.01, tta=tta), ctx)
    for a, b in zip(base.modules(), tuned.modules()):
        if isinstance(a, (PQConv2d, PQLinear)):
            assert torch.equal(a.indices, b.indices) and a.storage_bytes() == b.storage_bytes()
    with torch.no_grad():
        assert float(kd_loss(tuned(x), model(x), 1.0)) < 0.8 * float(kd_loss(base(x), model(x), 1.0))


def _pq_sizes(model, out):
    dense = sum(sum(p.numel() * 4 for p in (m.weight, m.bias) if p is not None)
                for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    return dense, sum(m.storage_bytes() for m in out.modules() if isinstance(m, (PQConv2d, PQLinear)))


def test_target_ratio_allocates_codewords_within_the_budget():
    model, data = tiny_model(), tiny_data()
    x = torch.cat([b[0] for b in data])
    ctx = CompressContext(data=data, progress=False)
    base = dict(k=4, sub_dim=2, ec_iters=1, steps=0)
    uniform = pq(model, x[:1], PQConfig(**base), ctx)
    assert set(uniform.pq_k.values()) == {4}  # no target: k everywhere
    dense, small = _pq_sizes(model, uniform)
    target = 0.8 * dense / small  # room for some layers at 8 or 16 codewords, not all
    mixed = pq(model, x[:1], PQConfig(**base, target_ratio=target, k_max=16), ctx)
    _, size = _pq_sizes(model, mixed)
    assert dense / size >= target  # the budget holds
    assert set(mixed.pq_k.values()) <= {4, 8, 16} and max(mixed.pq_k.values()) > 4  # some layers got more
    assert all(m.codebooks.shape[1] == mixed.pq_k[n] for n, m in mixed.named_modules() if isinstance(m, (PQConv2d, PQLinear)))
    ref = model(x)
    assert snr_db(ref, mixed(x)) > snr_db(ref, uniform(x))  # the extra bytes went where they help
    with pytest.warns(UserWarning, match="out of reach"):
        out = pq(model, x[:1], PQConfig(**base, target_ratio=1e6), ctx)
    assert set(out.pq_k.values()) == {4}


def test_k_options():
    assert PQConfig(k=8).k_options() == [8, 16, 32]
    assert PQConfig(k=64, k_max=256).k_options() == [64, 128, 256]
    with pytest.raises(ValueError, match="k_max"):
        PQConfig(k=16, k_max=8)
