"""Bit-packing round-trips exactly for every width, and ``bits`` bits really take ``bits`` bits."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from slimkit.comm.packing import pack_bits, packed_nbytes, rice_decode, rice_encode, unpack_bits


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 32), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_roundtrip_exact(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_known_layout():
    # little-endian inside a byte: codes 1, 2, 3, 0 at 2 bits -> 0b00_11_10_01
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([5, 1]), 3).tolist() == [0b001101]


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2\*\*2\)"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="bits must be an int in 1..32"):
        pack_bits(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 4)


def _reference_pack(codes, bits):
    # the plain definition: bit b of code i is bit (i*bits + b) of the stream, LSB first in each byte
    codes = codes.to(torch.int64)
    stream = ((codes.unsqueeze(1) >> torch.arange(bits)) & 1).reshape(-1)
    stream = torch.cat([stream, torch.zeros(packed_nbytes(codes.numel(), bits) * 8 - stream.numel(), dtype=torch.int64)])
    return (stream.view(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11, 16, 24, 32])
@pytest.mark.parametrize("n", [1, 9, 20_001])  # 20,001 takes the large-input path of the narrow widths
def test_every_code_path_matches_the_plain_bit_stream(bits, n):
    g = torch.Generator().manual_seed(bits * 7 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64)
    codes[0] = 2**bits - 1
    packed = pack_bits(codes, bits)
    assert torch.equal(packed, _reference_pack(codes, bits))
    assert torch.equal(unpack_bits(packed, bits, n), codes)
    if bits <= 8:  # compact code dtypes in and out give the same bytes
        assert torch.equal(pack_bits(codes.to(torch.uint8), bits), packed)
        assert torch.equal(unpack_bits(packed, bits, n, dtype=torch.uint8), codes.to(torch.uint8))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), scale=st.sampled_from([1, 10, 1000, 100_000]), seed=st.integers(0, 2**31 - 1))
def test_rice_code_roundtrips_and_picks_the_cheapest_k(n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    values = (torch.rand(n, generator=g) ** 3 * scale).long()
    k, low, unary, n_unary = rice_encode(values)
    costs = [n * (kk + 1) + int((values >> kk).sum()) for kk in range(31)]
    assert k == costs.index(min(costs)) and n_unary == n + int((values >> k).sum())
    assert unary.numel() == packed_nbytes(n_unary, 1) and low.numel() == packed_nbytes(n, k)
    low_codes = unpack_bits(low, k, n) if k else torch.zeros(n, dtype=torch.int64)
    assert torch.equal(rice_decode(k, low_codes, unary, n_unary), values)


@pytest.mark.parametrize("bits", range(1, 9))
def test_lane_kernels_with_reused_scratch_match_pack_bits(bits):
    from slimkit.comm.packing import pack_codes_, unpack_codes_

    work = torch.empty(2 * 4096, dtype=torch.uint8)
    for n in (8, 64, 4096):
        codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits + n), dtype=torch.uint8)
        out = pack_codes_(codes.clone(), bits, torch.empty(n * bits // 8, dtype=torch.uint8), work[:n])
        assert torch.equal(out, pack_bits(codes, bits))
        assert torch.equal(unpack_codes_(out, bits, torch.empty(n, dtype=torch.uint8), work[:2 * n]), codes)


def test_gaps_is_diff_from_minus_one():
    from slimkit.comm.packing import gaps

    idx = torch.tensor([0, 3, 4, 10])
    assert gaps(idx).tolist() == [0, 2, 0, 5]
    assert gaps(torch.zeros(0, dtype=torch.int64)).numel() == 0
