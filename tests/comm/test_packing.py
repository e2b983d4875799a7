"""Bit-packing round-trips exactly for every width, and ``bits`` bits really take ``bits`` bits."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from slimkit.comm.packing import pack_bits, packed_nbytes, unpack_bits


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
