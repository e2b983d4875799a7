"""QSGD: unbiased stochastic quantization onto a uniform grid, with bucketed L2 or max norms.

Each bucket of ``bucket_size`` values is divided by its norm, so values lie in [-1, 1], then
stochastically rounded onto K evenly spaced points of [-1, 1]: K = 2**bits - 1 (s = K // 2
non-zero levels per sign, zero included) for bits >= 2, and K = 2 ({-1, +1}) for bits = 1.
Rounding up with probability equal to the distance from the lower point keeps E[Q(v)] = v (the
noise has 16 bits, so that probability is exact to 2**-17; above 8 bits the fraction is taken
exactly first). The noise is numpy's SFC64, seeded per call by one draw of the compressor's torch
generator (torch.rand alone cost 10x a memcpy per value); everything runs chunk by chunk in cache.
Wire format (version 1): 2 header bytes (version << 4 | coding, bits), one float32 norm per bucket, then either every code
packed at ``bits`` bits ("dense") or only the non-zero codes with their indices ("sparse");
``coding="auto"`` sends whichever is smaller. Sparse indices travel as Golomb-Rice coded gaps
(entropy coding in the spirit of QSGD's Elias coding), non-zero codes without the zero level. Optional clipping (``clip``, see LPC) happens
inside the quantizer, before scaling.
"""
import math

import numpy as np
import torch

from slimkit.comm._registry import register_compressor
from slimkit.comm.base import Compressor, bits_for
from slimkit.comm.packing import (ByteReader, gaps, pack_bits, pack_codes_, packed_nbytes, rice_encode, rice_k,
                                  to_bytes, unpack_bits, unpack_codes_)

_DENSE, _SPARSE = 0, 1
# Wire format version, in the high 4 bits of header byte 0 (the low 4 bits are the coding). Version 0
# (no version bits) is the same layout, written before the version existed; both decode.
WIRE_VERSION = 1
_FMAX = torch.finfo(torch.float32).max
# Values per chunk: every stage of a chunk (scale, round, pack; unpack, scale) runs on data still in
# cache; a multiple of 8, so packed chunks start on a byte.
CHUNK = 1 << 17
_WORDS = 1 << 13  # 64-bit noise words per numpy call (64 KB: below glibc's mmap threshold)


class _NonFinite(Exception):
    """NaN/Inf met inside the chunk loop: the caller rewinds the noise and takes check_finite's path."""


class _Retry(Exception):
    """A scale came out non-finite in a fast (unchecked) pass: rerun carefully."""


def _bucket_mul(v: torch.Tensor, f: torch.Tensor, lo: int, size: int, out: torch.Tensor) -> torch.Tensor:
    """out = v * f[bucket of each value], for the values at positions lo .. lo + len(v) of a stream cut
    into buckets of ``size``: whole buckets as one broadcast (rows, size) op, partial ones as scalars."""
    m, pos = v.numel(), 0
    if lo % size == 0 and m % size == 0:  # the common case: whole buckets only
        r = m // size
        b = lo // size
        return torch.mul(v.view(r, size), f[b:b + r].unsqueeze(1), out=out.view(r, size)).view(-1)
    while pos < m:
        b, off = divmod(lo + pos, size)
        if off == 0 and m - pos >= size:
            r = (m - pos) // size
            torch.mul(v[pos:pos + r * size].view(r, size), f[b:b + r].unsqueeze(1),
                      out=out[pos:pos + r * size].view(r, size))
            pos += r * size
        else:
            end = min(m, pos + size - off)
            torch.mul(v[pos:end], f[b], out=out[pos:end])
            pos = end
    return out


def safe_l2(x: torch.Tensor) -> torch.Tensor:
    """Row L2 norms [rows, 1] that cannot overflow on finite input: the plain float32 norm, and for
    the rows where its squares overflowed, max|v| * ||v / max|v|||, saturated at float32 max."""
    norm = x.norm(dim=1, keepdim=True)
    bad = ~torch.isfinite(norm.reshape(-1))
    if bool(bad.any()):  # rare: only rows with |v| >~ 1e19 take the extra passes
        rows = x[bad]
        peak = rows.abs().amax(1, keepdim=True)
        norm[bad] = (peak * (rows / peak).norm(dim=1, keepdim=True)).clamp_max_(_FMAX)
    return norm


def safe_rms(x: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Row RMS [rows, 1] computed as peak * RMS(v / peak): no overflow on finite input."""
    rms = x.pow(2).mean(1, keepdim=True).sqrt()
    bad = ~torch.isfinite(rms.reshape(-1))
    if bool(bad.any()):
        rows, p = x[bad], peak[bad]
        rms[bad] = p * (rows / p).pow(2).mean(1, keepdim=True).sqrt()
    return rms


@register_compressor("qsgd")
class QSGD(Compressor):
    fixed_size = False  # coding="auto"/"sparse" sizes depend on the data

    def __init__(self, bits: int = 4, norm: str = "l2", bucket_size: int = 512, coding: str = "auto",
                 clip: float | None = None, seed: int = 0, nonfinite: str = "raise"):
        super().__init__(seed, nonfinite)
        if not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
        if norm not in ("l2", "max"):
            raise ValueError(f"norm must be 'l2' or 'max', got {norm!r}")
        if not isinstance(bucket_size, int) or bucket_size < 0:
            raise ValueError(f"bucket_size must be an int >= 0 (0 = one bucket), got {bucket_size!r}")
        if coding not in ("dense", "sparse", "auto"):
            raise ValueError(f"coding must be 'dense', 'sparse' or 'auto', got {coding!r}")
        if coding == "sparse" and bits == 1:
            raise ValueError("coding='sparse' needs a zero level, which bits=1 does not have")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 (in units of the bucket's RMS) or None, got {clip!r}")
        self.bits, self.norm, self.bucket_size, self.coding, self.clip = bits, norm, bucket_size, coding, clip
        self.fixed_size = coding == "dense"

    @staticmethod
    def levels(bits: int) -> int:
        return 2 if bits == 1 else (1 << bits) - 1

    def _noise(self):
        """This call's noise source: numpy's SFC64 (about 4x fewer ns per random bit than torch's CPU
        mt19937), seeded by one draw of ``self.generator``, so that generator still defines the
        stream (bind, state_dict and resume work as before)."""
        return np.random.SFC64(int(torch.randint(1 << 62, (), generator=self.generator)))

    def _scales(self, x: torch.Tensor, size: int, out: torch.Tensor, careful: bool, saturate: bool = False,
                work: torch.Tensor | None = None) -> None:
        """Scales of the buckets that tile ``x`` (rows of ``size``, the last one may be shorter) into
        ``out`` (``work``: float32 scratch of x's size). ``careful``: fix the rows whose norm overflowed (finite input: scale by the peak
        first, saturate at float32 max); NaN/Inf in ``x`` raise _NonFinite, or with ``saturate``
        (an overflowed g + alpha * h) are clamped to +-float32 max in place."""
        r, tail = divmod(x.numel(), size)
        if r:
            self._row_scales(x[:r * size].view(r, size), size, out[:r], careful, saturate, work)
        if tail:
            self._row_scales(x[r * size:].view(1, tail), size, out[r:r + 1], careful, saturate,
                             None if work is None else work[r * size:])

    def _row_scales(self, rows, size, out, careful, saturate, work=None):
        if self.clip is None and self.norm == "l2":
            torch.linalg.vector_norm(rows, dim=1, out=out)
        else:
            torch.amax(torch.abs(rows, out=work[:rows.numel()].view_as(rows)) if work is not None else rows.abs(),
                       1, out=out)
        if self.clip is not None:  # LPC: theta = min(max|v|, clip * RMS); RMS over ``size`` (zero padding)
            rms = torch.linalg.vector_norm(rows, dim=1).mul_(self.clip / math.sqrt(size))
            torch.minimum(out, rms, out=out)
        if not careful or math.isfinite(float(out.sum())):
            return
        bad = ~torch.isfinite(out)
        if not bool(bad.any()):
            return  # only the sum overflowed
        sub = rows[bad]
        if not bool(torch.isfinite(sub).all()):
            if not saturate:
                raise _NonFinite
            rows.clamp_(-_FMAX, _FMAX)
            return self._row_scales(rows, size, out, True, False)
        # rare: squares overflowed (|v| >~ 1e19); scale by the peak first, saturate at float32 max
        peak = sub.abs().amax(1, keepdim=True)
        if self.clip is None:
            out[bad] = (peak * safe_l2(sub / peak)).clamp_max_(_FMAX).reshape(-1)
        else:
            rms = (sub / peak).pow(2).sum(1, keepdim=True).div_(size).sqrt_()
            out[bad] = torch.minimum(peak, (peak * rms).mul_(self.clip)).clamp_max_(_FMAX).reshape(-1)

    def _encode(self, flat, bits, coding, decoded=None, ef=None, careful=False):
        """Quantize ``flat`` chunk by chunk (each chunk's scale, rounding, packing and error update run
        while it is in cache). Returns (scales float32 [buckets], dense bytes or None, all codes or
        None, number of non-zero codes or None): the dense bytes unless ``coding`` is "sparse", the
        codes (uint8, int32 above 8 bits) and their non-zero count unless it is "dense".
        ``decoded``: a float32 [n] tensor that receives the values a peer will decode.
        ``ef = (h, alpha, beta)``: quantize ``flat + alpha * h`` and update the error buffer in place,
        ``h <- beta * h + (flat - decoded)`` (ECQ-SGD); always ``careful``.
        ``careful``: check every chunk's scales (see ``_scales``); otherwise a non-finite scale found
        at the end raises _Retry. Rounding: code = trunc(u + c + noise), u = v / scale * c clamped to
        [-c, c], c = (K-1)/2, noise on the 2**16 midpoints of (0, 1): P(up) = the fraction to 2**-17."""
        n = flat.numel()
        size = self.bucket_size or max(n, 1)
        nb = max(1, -(-n // size))
        k = self.levels(bits)
        c, step, zero = (k - 1) / 2, 2.0 / (k - 1), (k - 1) // 2
        small = bits <= 8
        careful = careful or ef is not None
        scales = torch.zeros(nb, dtype=torch.float32)
        packed = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8) if coding != "sparse" and small else None
        codes = None if coding == "dense" and small else torch.empty(n, dtype=torch.uint8 if small else torch.int32)
        nnz = 0 if coding != "dense" else None
        floor, ct = torch.tensor(c / _FMAX * 2), torch.tensor(c)  # c / max(scale, floor) stays finite
        x, per_chunk = flat, size <= CHUNK
        if per_chunk:  # whole buckets per chunk, a multiple of 8 values
            rows = max(1, CHUNK // size)
            chunk = rows * size * (8 // math.gcd(rows * size, 8))
            inv = torch.empty(nb, dtype=torch.float32)
        else:  # few huge buckets: all scales first, then chunks inside them
            if ef is not None:
                x = torch.add(flat, ef[0], alpha=ef[1])
            self._scales(x, size, scales, careful, saturate=ef is not None)
            inv = torch.div(ct, scales.clamp_min(floor))
            chunk = CHUNK
        rng = self._noise()
        # scratch reused by every chunk: a fresh allocation per chunk costs page faults
        width = min(chunk, n)
        vbuf = torch.empty(width) if ef is not None and per_chunk else None
        u = torch.empty(width)
        noise = torch.empty(-(-width // 4) * 4, dtype=torch.int16)
        words = noise.numpy().view(np.uint64)
        cbuf = torch.empty(-(-width // 8) * 8, dtype=torch.uint8) if small else None
        c8 = cbuf.view(torch.int8) if small and bits < 8 else None
        i16 = torch.empty(width, dtype=torch.int16) if bits == 8 else None
        work = torch.empty(cbuf.numel(), dtype=torch.uint8) if packed is not None else None
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            m = hi - lo
            v = x[lo:hi]
            if per_chunk:  # this chunk's scales, while it is in cache
                if ef is not None:
                    v = torch.add(v, ef[0][lo:hi], alpha=ef[1], out=vbuf[:m])
                b0, b1 = lo // size, -(-hi // size)
                s, iv = scales[b0:b1], inv[b0:b1]
                self._scales(v, size, s, careful, saturate=ef is not None, work=u)
                torch.div(ct, torch.clamp_min(s, floor, out=iv), out=iv)
            um = _bucket_mul(v, inv, lo, size, u[:m]).clamp_(-c, c)
            nw = -(-m // 4)
            for a in range(0, nw, _WORDS):  # numpy returns fresh arrays: small ones stay off mmap
                words[a:min(nw, a + _WORDS)] = rng.random_raw(min(_WORDS, nw - a))
            nm = noise[:m]
            if small:
                um.add_(nm, alpha=2.0 ** -16).add_(c + 0.5 + 2.0 ** -17)
                cm = cbuf[:m]
                if bits < 8:  # truncation (values in (0, 2c + 1)); float -> int8 is the fast conversion
                    c8[:m].copy_(um)
                else:
                    cm.copy_(i16[:m].copy_(um))
                if codes is not None:
                    codes[lo:hi] = cm
                    nnz += m - int((cm == zero).sum())
            else:  # above 8 bits u + c + noise would round: exact floor and fraction
                um.add_(c)
                low = um.floor()
                cm = codes[lo:hi]
                cm.copy_(low)
                um.sub_(low).add_(nm, alpha=2.0 ** -16).add_(0.5 + 2.0 ** -17)
                cm += um.to(torch.int32)
                if nnz is not None:
                    nnz += m - int((cm == zero).sum())
            if decoded is not None or ef is not None:
                q = um.copy_(cm).mul_(step).sub_(1.0)  # the arithmetic of dequantize, bit for bit
                _bucket_mul(q, scales, lo, size, q)
                if decoded is not None:
                    decoded[lo:hi] = q
                if ef is not None:  # h <- beta * h + (g - q), saturated (finite inputs can overflow)
                    h = ef[0][lo:hi]
                    torch.add(torch.sub(flat[lo:hi], q, out=q), h, alpha=ef[2], out=h).clamp_(-_FMAX, _FMAX)
            if packed is not None:
                b = lo * bits // 8
                if m % 8 == 0:
                    pack_codes_(cm, bits, packed[b:b + m * bits // 8], work)
                else:  # the last chunk: pad to whole lanes, keep the bytes that exist
                    mc = -(-m // 8) * 8
                    cbuf[m:mc] = 0
                    tmp = pack_codes_(cbuf[:mc], bits, torch.empty(mc * bits // 8, dtype=torch.uint8), work)
                    packed[b:] = tmp[:packed.numel() - b]
        if not careful and not math.isfinite(float(scales.sum())):
            raise _Retry
        return scales, packed, codes, nnz

    def quantize(self, flat: torch.Tensor, bits: int | None = None):
        """(codes int64 [n], scales float32 [buckets]) for ``flat``."""
        scales, _, codes, _ = self._encode_checked(flat.reshape(-1).float(), bits or self.bits, "sparse")
        return codes.to(torch.int64), scales

    def _encode_checked(self, flat, bits, coding, decoded=None, ef=None):
        """``_encode``, rerun with the noise stream rewound (so a retry draws what a clean call would
        have): ``careful`` when a scale came out non-finite, and on NaN/Inf input the way
        ``check_finite`` says (raise, or encode zeros)."""
        state = self.generator.get_state()
        try:
            try:
                return self._encode(flat, bits, coding, decoded, ef)
            except _Retry:
                self.generator.set_state(state)
                return self._encode(flat, bits, coding, decoded, ef, careful=True)
        except _NonFinite:
            self.generator.set_state(state)
            return self._encode(self.check_finite(flat), bits, coding, decoded, ef)

    def dequantize(self, codes, scales, bits, n):
        """Values of ``codes`` on the grid of their bucket: (code * 2/(K-1) - 1) * bucket scale."""
        k = self.levels(bits)
        size = self.bucket_size or max(n, 1)
        vals = codes.to(torch.float32).mul_(2.0 / (k - 1)).sub_(1.0)
        return _bucket_mul(vals, scales, 0, size, vals)

    def compress(self, flat, segments=None, bits: int | None = None):
        self._last = None  # nothing cached: decompress_own decodes (compress_decoded fills it)
        return self._compress(flat, bits or self.bits, None, None)

    def compress_decoded(self, flat, segments=None, bits: int | None = None):
        """(payload, what ``decompress(payload)`` returns), without decoding the payload again."""
        decoded = torch.empty(flat.numel(), dtype=torch.float32)
        return self._compress(flat, bits or self.bits, decoded, None), decoded

    def _compress(self, flat, bits, decoded, ef):
        n = flat.numel()
        coding = self.coding if bits > 1 else "dense"
        head = torch.tensor([WIRE_VERSION << 4, bits], dtype=torch.uint8)
        scales, packed, codes, nnz = self._encode_checked(flat.reshape(-1).float(), bits, coding, decoded, ef)
        if coding == "dense" and packed is None:  # above 8 bits: pack all codes at once
            packed = pack_bits(codes, bits, check=False)
        sparse = None
        if coding == "sparse" or (coding == "auto" and self._sparse_may_win(n, nnz, bits)):
            sparse = self._sparse_parts(codes, bits)
            if coding == "auto" and sum(p.numel() for p in sparse) >= packed_nbytes(n, bits):
                sparse = None
        if sparse is not None:
            head[0] |= _SPARSE
            return torch.cat([head, to_bytes(scales)] + sparse)
        if packed is None:
            packed = pack_bits(codes, bits, check=False)
        out = torch.empty(2 + 4 * scales.numel() + packed.numel(), dtype=torch.uint8)
        out[:2] = head
        out[2:2 + 4 * scales.numel()] = scales.view(torch.uint8)
        out[2 + 4 * scales.numel():] = packed
        return out

    def _sparse_may_win(self, n, nnz, bits):
        """A lower bound of the sparse size (every gap coded in 1 bit) against the dense size: when
        even that loses, the sparse parts are not built."""
        return 9 + (nnz * (1 + self._nz_bits(bits)) + 7) // 8 < packed_nbytes(n, bits)

    def _sparse_parts(self, codes, bits):
        zero = (self.levels(bits) - 1) // 2
        nz = (codes != zero).nonzero().reshape(-1)
        last = int(nz[-1]) if nz.numel() else -1
        gap = gaps(nz)
        k = rice_k(gap, last + 1 - nz.numel())  # the gaps sum to the zeros before the last non-zero
        if k == 0:  # the unary stream is one bit per position up to the last non-zero: 1 = a zero code
            n_unary = last + 1
            low, unary = torch.zeros(0, dtype=torch.uint8), pack_bits(codes[:n_unary] == zero, 1, check=False)
        else:
            k, low, unary, n_unary = rice_encode(gap, k)
        vals = codes[nz]
        vals -= (vals > zero).to(vals.dtype)  # drop the zero level: 2 bits -> 1 bit for ternary
        counts = torch.tensor([nz.numel(), n_unary], dtype=torch.int32)
        return [to_bytes(counts), torch.tensor([k], dtype=torch.uint8), low, unary,
                pack_bits(vals, self._nz_bits(bits), check=False)]

    def _nz_bits(self, bits):
        return bits_for(self.levels(bits) - 1)

    def _decode_dense(self, packed, scales, bits, n, size, out):
        """Chunked dense decode: unpack, then (code * 2/(K-1) - 1) * scale, bit-identical to
        ``dequantize``, written straight into ``out``."""
        step = 2.0 / (self.levels(bits) - 1)
        out = torch.empty(n, dtype=torch.float32) if out is None else out.reshape(-1)
        codes = torch.empty(min(CHUNK, -(-n // 8) * 8), dtype=torch.uint8)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            m, mc = hi - lo, -(-(hi - lo) // 8) * 8
            b, nbytes = lo * bits // 8, mc * bits // 8
            src = packed[b:b + nbytes]
            if src.numel() < nbytes:  # the last chunk: pad to whole lanes
                src = torch.cat([src, src.new_zeros(nbytes - src.numel())])
            unpack_codes_(src, bits, codes[:mc])
            o = out[lo:hi]
            o.copy_(codes[:m]).mul_(step).sub_(1.0)
            _bucket_mul(o, scales, lo, size, o)
        return out

    def decompress(self, payload, numel, out: torch.Tensor | None = None):
        """The values of ``payload``; ``out``: an optional float32 tensor of ``numel`` values to write
        them into (a reused buffer saves the page faults of a fresh one)."""
        r = ByteReader(payload)
        head, bits = r.take(2).tolist()
        version, coding = head >> 4, head & 15
        if version > WIRE_VERSION:
            raise ValueError(f"{self.name} payload has wire format version {version}; this slimkit reads "
                             f"versions 0..{WIRE_VERSION} (upgrade slimkit on every rank)")
        size = self.bucket_size or max(numel, 1)
        nb = max(1, -(-numel // size))
        scales = r.take_as(nb, torch.float32)
        dtype = torch.uint8 if bits <= 8 else torch.int32
        if coding != _SPARSE:
            packed = r.take(packed_nbytes(numel, bits))
            if bits > 8:
                return self.dequantize(unpack_bits(packed, bits, numel, dtype=dtype), scales, bits, numel)
            return self._decode_dense(packed, scales, bits, numel, size, out)
        nnz, n_unary = r.take_as(2, torch.int32).tolist()
        k = int(r.take(1))
        low = r.take(packed_nbytes(nnz, k))
        unary = r.take(packed_nbytes(n_unary, 1))
        ends = (unpack_bits(unary, 1, n_unary, dtype=torch.uint8) == 0).nonzero().reshape(-1)
        if ends.numel() != nnz:
            raise ValueError(f"corrupt {self.name} payload: {ends.numel()} unary codes, header says {nnz}")
        if k == 0:  # the gaps are the unary runs: the zero bits sit at the indices themselves
            idx = ends
        else:
            idx = gaps(ends).bitwise_left_shift_(k).add_(unpack_bits(low, k, nnz)).add_(1).cumsum_(0).sub_(1)
        zero = (self.levels(bits) - 1) // 2
        nzb = self._nz_bits(bits)
        vals = unpack_bits(r.take(packed_nbytes(nnz, nzb)), nzb, nnz, dtype=dtype)
        vals += vals >= zero
        # every value is (code * 2/(K-1) - 1) * scale, as in dequantize: the zero level's value per
        # bucket everywhere, then the non-zero codes at their indices
        step = 2.0 / (self.levels(bits) - 1)
        zero_val = torch.tensor([zero], dtype=torch.float32).mul_(step).sub_(1.0)
        out = torch.empty(numel, dtype=torch.float32) if out is None else out.reshape(-1)
        if float(zero_val) == 0.0:
            out.zero_()
        else:
            _bucket_mul(out.fill_(float(zero_val)), scales, 0, size, out)
        bucket = idx >> (size.bit_length() - 1) if size & (size - 1) == 0 else idx.div(size, rounding_mode="floor")
        out.index_copy_(0, idx, vals.to(torch.float32).mul_(step).sub_(1.0).mul_(scales[bucket]))
        return out
