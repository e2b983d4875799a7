"""Bit-packing: ``bits`` really means ``bits`` on the wire.

``pack_bits(codes, bits)`` stores n integer codes (each < 2**bits) in ceil(n*bits/8) bytes,
little-endian within each byte; ``unpack_bits`` is its exact inverse. Widths 1..32 are supported.
Every width is packed with a handful of whole-tensor ops (no per-element or per-bit Python loops):
widths that divide a byte OR their codes into bytes, other widths <= 8 put 8 codes into one int64
(``bits`` bytes of it), multiples of 8 take the low bytes of each code, the rest go through a
uint8 bit matrix.
"""
import sys

import torch

_FAST = (1, 2, 4)  # widths that divide a byte: shift-and-or inside uint8
_SMALL = 16384  # below this many codes, per-op overhead dominates: fewer, wider ops
_LITTLE = sys.byteorder == "little"  # the int64 byte-view paths assume a little-endian host


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _check_bits(bits):
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in 1..32, got {bits!r}")


def _padded(codes: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(total, dtype=dtype)
    n = codes.numel()
    out[:n] = codes
    out[n:] = 0
    return out


_ARANGE: dict = {}


def _arange(start: int, stop: int, step: int, dtype: torch.dtype) -> torch.Tensor:
    """Cached shift vectors (read-only: never written to)."""
    key = (start, stop, step, dtype)
    if key not in _ARANGE:
        _ARANGE[key] = torch.arange(start, stop, step, dtype=dtype)
    return _ARANGE[key]


def _column0(v: torch.Tensor) -> torch.Tensor:
    """A fresh, stride-1 copy of column 0 (a length-1 slice would keep its old stride)."""
    return torch.empty(v.shape[0], dtype=v.dtype).copy_(v[:, 0])


def pack_bits(codes: torch.Tensor, bits: int, check: bool = True) -> torch.Tensor:
    """Pack a 1-D tensor of non-negative integers < 2**bits into a uint8 tensor.
    ``check=False`` skips the range check (for callers whose codes are in range by construction)."""
    _check_bits(bits)
    codes = codes.reshape(-1)
    if codes.dtype == torch.bool:
        codes = codes.view(torch.uint8)
    elif codes.is_floating_point():  # integer-valued floats were accepted before: keep accepting them
        codes = codes.to(torch.int64)
    n = codes.numel()
    if check and n:
        lo, hi = (int(v) for v in torch.aminmax(codes))
        if lo < 0 or hi >= (1 << bits):
            raise ValueError(f"codes must lie in [0, 2**{bits}), got range [{lo}, {hi}]")
    nbytes = packed_nbytes(n, bits)
    if bits == 8:
        return codes.to(torch.uint8, copy=True)
    if bits < 8 and n >= _SMALL:  # one uint8 copy, then shifts on int16/32/64 lanes
        out = torch.empty(-(-n // 8) * bits, dtype=torch.uint8)
        pack_codes_(_padded(codes, -(-n // 8) * 8, torch.uint8), bits, out)
        return out[:nbytes]
    if bits in _FAST:
        per = 8 // bits
        v = _padded(codes, nbytes * per, torch.uint8).view(nbytes, per)
        if n < _SMALL:  # few values: one shift and one sum (disjoint bit fields: sum == or)
            return (v << _arange(0, 8, bits, torch.uint8)).sum(1, dtype=torch.uint8)
        out = _column0(v)
        for j in range(1, per):  # per <= 8 whole-tensor ops, no (n, per) temporary
            out |= v[:, j] << (j * bits)
        return out
    if _LITTLE and bits < 8:  # 3, 5, 6, 7: 8 codes -> one int64 -> its low ``bits`` bytes
        groups = -(-n // 8)
        v = _padded(codes, groups * 8, torch.int64).view(groups, 8)
        if n < _SMALL:
            acc = (v << _arange(0, 8 * bits, bits, torch.int64)).sum(1)
        else:
            acc = _column0(v)
            for j in range(1, 8):
                acc |= v[:, j] << (j * bits)
        return acc.view(torch.uint8).view(groups, 8)[:, :bits].reshape(-1)[:nbytes].clone()
    if _LITTLE and bits % 8 == 0:  # 16, 24, 32: the low bytes of each code
        return codes.to(torch.int64).view(torch.uint8).view(n, 8)[:, : bits // 8].reshape(-1).clone()
    # other widths: a uint8 bit matrix, then 8 bits per byte
    bit_idx = torch.arange(bits, dtype=torch.int64)
    flat = ((codes.to(torch.int64).unsqueeze(1) >> bit_idx) & 1).to(torch.uint8).reshape(-1)
    v = _padded(flat, nbytes * 8, torch.uint8).view(nbytes, 8)
    out = _column0(v)
    for j in range(1, 8):
        out |= v[:, j] << j
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``n`` codes (int64 unless ``dtype`` says otherwise;
    uint8 is enough for bits <= 8)."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"expected a 1-D uint8 tensor, got {packed.dtype} with shape {tuple(packed.shape)}")
    nbytes = packed_nbytes(n, bits)
    if packed.numel() < nbytes:
        raise ValueError(f"{n} codes of {bits} bits need {nbytes} bytes, got {packed.numel()}")
    p = packed[:nbytes]
    if bits == 8:
        return p.to(dtype, copy=True)
    if bits < 8 and n >= _SMALL:
        n8 = -(-n // 8) * 8
        out = unpack_codes_(_padded(p, n8 * bits // 8, torch.uint8), bits, torch.empty(n8, dtype=torch.uint8))
        return out[:n].to(dtype, copy=True) if dtype != torch.uint8 or n8 != n else out
    if bits in _FAST:
        shifts = _arange(0, 8, bits, torch.uint8)
        out = (p.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
        return out.reshape(-1)[:n].to(dtype)
    if _LITTLE and bits < 8:
        groups = -(-n // 8)
        buf = torch.zeros(groups, 8, dtype=torch.uint8)
        buf[:, :bits] = _padded(p, groups * bits, torch.uint8).view(groups, bits)
        shifts = _arange(0, 8 * bits, bits, torch.int64)
        out = (buf.view(torch.int64) >> shifts) & ((1 << bits) - 1)  # (groups, 1) >> (8,) -> (groups, 8)
        return out.reshape(-1)[:n].to(dtype)
    if _LITTLE and bits % 8 == 0:
        buf = torch.zeros(n, 8, dtype=torch.uint8)
        buf[:, : bits // 8] = p.view(n, bits // 8)
        return buf.view(torch.int64).reshape(-1).to(dtype)
    flat = ((p.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[: n * bits]
    return (flat.to(torch.int64).view(n, bits) << torch.arange(bits, dtype=torch.int64)).sum(1).to(dtype)


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
        return from_bytes(self.take(n * dtype.itemsize), dtype)


def rice_k(values: torch.Tensor, total: int | None = None) -> int:
    """The Golomb-Rice k in [0, 30] that minimises cost(k) = n*(k+1) + sum(v >> k), the smallest on
    ties. cost is convex in k (its step n - sum((v >> k) - (v >> (k+1))) never decreases), so a walk
    from floor(log2(mean)) needs 2-3 passes over ``values`` (``total``: their sum, if known)."""
    n = values.numel()
    if n == 0:
        return 0
    tmp = torch.empty_like(values)
    sums = {0: int(values.sum()) if total is None else int(total)}

    def s(k):
        if k not in sums:
            sums[k] = int(torch.bitwise_right_shift(values, k, out=tmp).sum())
        return sums[k]

    def rises(k):  # cost(k + 1) >= cost(k)
        return k >= 30 or n + s(k + 1) - s(k) >= 0

    k = min(30, max(0, (sums[0] // n).bit_length() - 1))
    if rises(k):
        while k > 0 and rises(k - 1):
            k -= 1
    else:
        while not rises(k):
            k += 1
    return k


def rice_encode(values: torch.Tensor, k: int | None = None) -> tuple[int, torch.Tensor, torch.Tensor, int]:
    """Golomb-Rice code for non-negative ints, split into two streams so both decode vectorised:
    (k, low k bits of each value packed at k bits, unary quotients packed at 1 bit -- q ones then a
    zero each --, number of unary bits). k minimises the total size (the smallest k on ties) unless
    given."""
    values = values.reshape(-1).to(torch.int64)
    n = values.numel()
    if n == 0:
        return 0, torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8), 0
    k = rice_k(values) if k is None else k
    ends = torch.bitwise_right_shift(values, k).add_(1).cumsum_(0).sub_(1)  # each terminating zero
    n_unary = int(ends[-1]) + 1
    nbytes = packed_nbytes(n_unary, 1)
    bitmap = torch.ones(8 * nbytes, dtype=torch.uint8).index_fill_(0, ends, 0)  # all ones but the zeros
    bitmap[n_unary:] = 0  # padding bits are zero, as pack_bits writes them
    unary = pack_codes_(bitmap, 1, torch.empty(nbytes, dtype=torch.uint8))
    low = pack_bits(values & ((1 << k) - 1), k, check=False) if k else torch.zeros(0, dtype=torch.uint8)
    return k, low, unary, n_unary


def gaps(idx: torch.Tensor) -> torch.Tensor:
    """Zeros between consecutive sorted indices (the first counts from -1): diff without the copies
    of ``torch.diff(prepend=...)``."""
    out = torch.empty_like(idx)
    if idx.numel():
        out[:1] = idx[:1] + 1  # idx[0] - (-1)
        torch.sub(idx[1:], idx[:-1], out=out[1:])
    return out.sub_(1)


def rice_decode(k: int, low_codes: torch.Tensor, unary: torch.Tensor, n_unary: int) -> torch.Tensor:
    """Inverse of ``rice_encode`` given the unpacked low codes and the packed unary stream."""
    nbytes = packed_nbytes(n_unary, 1)
    if unary.numel() < nbytes:
        raise ValueError(f"{n_unary} unary bits need {nbytes} bytes, got {unary.numel()}")
    zeros = unpack_bits(255 - unary[:nbytes], 1, n_unary, dtype=torch.uint8).view(torch.bool)
    ends = zeros.nonzero().reshape(-1)
    q = torch.diff(ends, prepend=ends.new_full((1,), -1)) - 1
    return (q << k) + low_codes


# -- chunk kernels: one uint8 code per byte <-> packed bytes ------------------------------------------
# A lane of 2, 4 or 8 code bytes is read as one int16/int32/int64; log2(codes per lane) shift-or-mask
# steps gather the fields into the lane's low bytes (bits 4: one step on int16, bits 2: two on int32,
# the others three on int64). No (n, per) temporaries and no per-code Python work; callers run them on
# cache-sized chunks of a multiple of 8 codes.
_PLANS: dict = {}


def _plan(bits: int):
    """(lane dtype, [(span, field bits, mask of the low field of every 2*span-bit group)])."""
    if bits not in _PLANS:
        lane = {4: torch.int16, 2: torch.int32}.get(bits, torch.int64)
        width, span, steps = 8 * lane.itemsize, 8, []
        while span < width:
            f = bits * span // 8
            steps.append((span, f, sum(((1 << f) - 1) << (2 * span * i) for i in range(width // (2 * span)))))
            span *= 2
        _PLANS[bits] = lane, steps
    return _PLANS[bits]


def _lanes(work, n, dtype):
    return torch.empty(n, dtype=dtype) if work is None else work[:n * dtype.itemsize].view(dtype)


def pack_codes_(codes: torch.Tensor, bits: int, out: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """Pack ``codes`` (uint8, a multiple of 8 of them, each < 2**bits, bits <= 8; overwritten) into
    ``out`` (uint8, len(codes) * bits // 8 bytes) in the layout of ``pack_bits``. ``work``: optional
    uint8 scratch of len(codes) bytes (reused buffers spare the allocator's page faults)."""
    if bits == 8:
        return out.copy_(codes)
    lane, steps = _plan(bits)
    w = codes.view(lane)
    t = _lanes(work, w.numel(), lane)
    for i, (span, f, low) in enumerate(steps):
        torch.bitwise_right_shift(w, span - f, out=t)
        if bits <= 4:  # a field never meets its own shifted copy: or, then mask (not needed at the end)
            t.bitwise_or_(w)
            if i < len(steps) - 1:
                t.bitwise_and_(low | low << f)
        else:
            t.bitwise_and_(low << f).bitwise_or_(w.bitwise_and_(low))
        w, t = t, w
    if bits in (1, 2, 4):  # one output byte per lane: a narrowing copy keeps the low byte
        return out.copy_(w)
    out.view(-1, bits).copy_(w.view(torch.uint8).view(-1, 8)[:, :bits])
    return out


def unpack_codes_(packed: torch.Tensor, bits: int, out: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of ``pack_codes_``: ``out`` (uint8, a multiple of 8 codes) from ``len(out) * bits // 8``
    bytes of ``packed``. ``work``: optional uint8 scratch of 2 * len(out) bytes."""
    if bits == 8:
        return out.copy_(packed)
    lane, steps = _plan(bits)
    n = out.numel() // (8 // bits if bits in (1, 2, 4) else 8)  # lanes
    buf = [_lanes(None if work is None else work[:out.numel()], n, lane),
           _lanes(None if work is None else work[out.numel():], n, lane)]
    if bits in (1, 2, 4):
        w = buf[0].copy_(packed)  # zero-extends each byte into its lane
    else:
        w = buf[0]
        w.zero_().view(torch.uint8).view(-1, 8)[:, :bits] = packed.view(-1, bits)
    t = out.view(lane)
    for i, (span, f, low) in enumerate(reversed(steps)):
        dst = t if i == len(steps) - 1 else buf[(i + 1) % 2]
        torch.bitwise_left_shift(w, span - f, out=dst)
        if bits <= 4:
            dst.bitwise_or_(w).bitwise_and_(low | low << span)
        else:
            dst.bitwise_and_(low << span).bitwise_or_(w.bitwise_and_(low))
        w = dst
    return out
