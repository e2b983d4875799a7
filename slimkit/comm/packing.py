"""Bit-packing: ``bits`` really means ``bits`` on the wire.

``pack_bits(codes, bits)`` stores n integer codes (each < 2**bits) in ceil(n*bits/8) bytes,
little-endian within each byte; ``unpack_bits`` is its exact inverse. Widths 1..32 are supported.
"""
import torch

_FAST = (1, 2, 4, 8)  # widths that divide a byte: shift-and-sum, no bit matrix


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _check_bits(bits):
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in 1..32, got {bits!r}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D tensor of non-negative integers < 2**bits into a uint8 tensor."""
    _check_bits(bits)
    codes = codes.reshape(-1).to(torch.int64)
    n = codes.numel()
    if n and (int(codes.min()) < 0 or int(codes.max()) >= (1 << bits)):
        raise ValueError(f"codes must lie in [0, 2**{bits}), got range [{int(codes.min())}, {int(codes.max())}]")
    if bits in _FAST:
        per = 8 // bits
        padded = torch.zeros(packed_nbytes(n, bits) * per, dtype=torch.int64)
        padded[:n] = codes
        shifts = torch.arange(per, dtype=torch.int64) * bits
        return (padded.view(-1, per) << shifts).sum(1).to(torch.uint8)
    # generic width: expand to a bit matrix, then pack 8 bits per byte
    bit_idx = torch.arange(bits, dtype=torch.int64)
    flat = ((codes.unsqueeze(1) >> bit_idx) & 1).reshape(-1)
    padded = torch.zeros(packed_nbytes(n, bits) * 8, dtype=torch.int64)
    padded[: flat.numel()] = flat
    return (padded.view(-1, 8) << torch.arange(8, dtype=torch.int64)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``n`` codes as int64."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"expected a 1-D uint8 tensor, got {packed.dtype} with shape {tuple(packed.shape)}")
    if packed.numel() < packed_nbytes(n, bits):
        raise ValueError(f"{n} codes of {bits} bits need {packed_nbytes(n, bits)} bytes, got {packed.numel()}")
    p = packed.to(torch.int64)
    if bits in _FAST:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int64) * bits
        return ((p.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
    flat = ((p.unsqueeze(1) >> torch.arange(8, dtype=torch.int64)) & 1).reshape(-1)[: n * bits]
    return (flat.view(n, bits) << torch.arange(bits, dtype=torch.int64)).sum(1)


def to_bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes as a 1-D uint8 tensor (a copy)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


def from_bytes(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # clone first: a view into the middle of a byte buffer may be misaligned for the wider dtype
    return b.clone().view(dtype)


class ByteReader:
    """Reads consecutive sections from a uint8 payload."""

    def __init__(self, payload: torch.Tensor):
        self.buf, self.pos = payload, 0

    def take(self, nbytes: int) -> torch.Tensor:
        if self.pos + nbytes > self.buf.numel():
            raise ValueError(f"payload too short: need {self.pos + nbytes} bytes, have {self.buf.numel()}")
        out = self.buf[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return out

    def take_as(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        size = torch.empty((), dtype=dtype).element_size()
        return from_bytes(self.take(n * size), dtype)


def rice_encode(values: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Golomb-Rice code for non-negative ints, split into two streams so both decode vectorised:
    (k, low k bits of each value packed at k bits, unary quotients: q ones then a zero each)."""
    values = values.reshape(-1).to(torch.int64)
    costs = [(values.numel() * (k + 1) + int((values >> k).sum()), k) for k in range(0, 31)]
    k = min(costs)[1]
    q = values >> k
    ends = torch.cumsum(q + 1, 0) - 1  # position of each terminating zero
    unary = torch.ones(int(ends[-1]) + 1 if values.numel() else 0, dtype=torch.int64)
    unary[ends] = 0
    low = pack_bits(values & ((1 << k) - 1), k) if k else torch.zeros(0, dtype=torch.uint8)
    return k, low, unary


def rice_decode(k: int, low_codes: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
    ends = (unary == 0).nonzero().reshape(-1)
    q = torch.diff(ends, prepend=torch.tensor([-1])) - 1
    return (q << k) + low_codes
