"""QSGD: unbiased stochastic quantization onto a uniform grid, with bucketed L2 or max norms.

Each bucket of ``bucket_size`` values is divided by its norm, so values lie in [-1, 1], then
stochastically rounded onto K evenly spaced points of [-1, 1]: K = 2**bits - 1 (s = K // 2
non-zero levels per sign, zero included) for bits >= 2, and K = 2 ({-1, +1}) for bits = 1.
Rounding up with probability equal to the distance from the lower point keeps E[Q(v)] = v.
Wire format (version 1): 2 header bytes (version << 4 | coding, bits), one float32 norm per bucket, then either every code
packed at ``bits`` bits ("dense") or only the non-zero codes with their indices ("sparse");
``coding="auto"`` sends whichever is smaller. Sparse indices travel as Golomb-Rice coded gaps
(entropy coding in the spirit of QSGD's Elias coding), non-zero codes without the zero level. Optional clipping (``clip``, see LPC) happens
inside the quantizer, before scaling.
"""
import torch

from slimkit.comm._registry import register_compressor
from slimkit.comm.base import Compressor, bits_for
from slimkit.comm.packing import (ByteReader, pack_bits, packed_nbytes, rice_decode, rice_encode, to_bytes,
                                  unpack_bits)

_DENSE, _SPARSE = 0, 1
# Wire format version, in the high 4 bits of header byte 0 (the low 4 bits are the coding). Version 0
# (no version bits) is the same layout, written before the version existed; both decode.
WIRE_VERSION = 1
_FMAX = torch.finfo(torch.float32).max


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

    def options(self):
        return {"bits": self.bits, "norm": self.norm, "bucket_size": self.bucket_size,
                "coding": self.coding, "clip": self.clip}

    @staticmethod
    def levels(bits: int) -> int:
        return 2 if bits == 1 else (1 << bits) - 1

    def _buckets(self, flat):
        n = flat.numel()
        size = self.bucket_size or max(n, 1)
        nb = max(1, -(-n // size))
        padded = torch.zeros(nb * size, dtype=torch.float32)
        padded[:n] = flat.reshape(-1).float()
        return padded.view(nb, size)

    def _scales(self, x):
        if self.clip is not None:
            # LPC: clip to theta = min(max|v|, clip * RMS) inside the quantizer; the scale is theta
            peak = x.abs().amax(1, keepdim=True)
            theta = torch.minimum(peak, self.clip * safe_rms(x, peak)).clamp_max_(_FMAX)
            return x.clamp(-theta, theta), theta
        if self.norm == "l2":
            return x, safe_l2(x)
        return x, x.abs().amax(1, keepdim=True)

    def _codes(self, flat: torch.Tensor, bits: int):
        """(codes [n] as uint8 for bits <= 8 else int32, scales float32 [buckets])."""
        n = flat.numel()
        x, scale = self._scales(self._buckets(self.check_finite(flat.reshape(-1))))
        k = self.levels(bits)
        u = x / scale.clamp_min(torch.finfo(torch.float32).tiny)
        u.add_(1).mul_((k - 1) / 2).clamp_(0, k - 1)  # in place, same arithmetic as (x / s + 1) * c
        low = u.floor().clamp_(max=k - 2)
        up = torch.rand(u.shape, generator=self.generator) < u.sub_(low)
        dtype = torch.uint8 if bits <= 8 else torch.int32
        codes = low.reshape(-1)[:n].to(dtype)
        codes += up.reshape(-1)[:n]
        return codes, scale.reshape(-1)

    def quantize(self, flat: torch.Tensor, bits: int | None = None):
        """(codes int64 [n], scales float32 [buckets]) for ``flat``."""
        codes, scales = self._codes(flat, bits or self.bits)
        return codes.to(torch.int64), scales

    def dequantize(self, codes, scales, bits, n):
        """Values of ``codes`` on the grid of their bucket: (code * 2/(K-1) - 1) * bucket scale."""
        k = self.levels(bits)
        size = self.bucket_size or max(n, 1)
        vals = codes.to(torch.float32).mul_(2.0 / (k - 1)).sub_(1.0)
        full = (n // size) * size  # whole buckets multiply as a (buckets, size) view, the tail by the last scale
        vals[:full].view(-1, size).mul_(scales[: n // size].unsqueeze(1))
        if full < n:
            vals[full:].mul_(scales[n // size])
        return vals

    def compress(self, flat, segments=None, bits: int | None = None):
        payload, decoded = self.compress_decoded(flat, segments, bits)
        self._last = (payload, decoded)  # decompress_own() returns it instead of decoding again
        return payload

    def compress_decoded(self, flat, segments=None, bits: int | None = None):
        """(payload, what ``decompress(payload)`` returns), without decoding the payload again."""
        bits = bits or self.bits
        n = flat.numel()
        codes, scales = self._codes(flat, bits)
        coding = self.coding if bits > 1 else "dense"
        sparse = self._sparse_parts(codes, bits) if coding != "dense" else None
        if coding == "auto":
            coding = "sparse" if sum(p.numel() for p in sparse) < packed_nbytes(n, bits) else "dense"
        head = torch.tensor([(WIRE_VERSION << 4) | (_SPARSE if coding == "sparse" else _DENSE), bits],
                            dtype=torch.uint8)
        parts = [head, to_bytes(scales.float())]
        parts += sparse if coding == "sparse" else [pack_bits(codes, bits, check=False)]
        return torch.cat(parts), self.dequantize(codes, scales, bits, n)

    def _sparse_parts(self, codes, bits):
        zero = (self.levels(bits) - 1) // 2
        nz = (codes != zero).nonzero().reshape(-1)
        gaps = torch.diff(nz, prepend=nz.new_full((1,), -1)) - 1
        k, low, unary, n_unary = rice_encode(gaps)
        vals = codes[nz]
        vals -= (vals > zero).to(vals.dtype)  # drop the zero level: 2 bits -> 1 bit for ternary
        counts = torch.tensor([nz.numel(), n_unary], dtype=torch.int32)
        return [to_bytes(counts), torch.tensor([k], dtype=torch.uint8), low, unary,
                pack_bits(vals, self._nz_bits(bits), check=False)]

    def _nz_bits(self, bits):
        return bits_for(self.levels(bits) - 1)

    def decompress(self, payload, numel):
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
            codes = unpack_bits(r.take(packed_nbytes(numel, bits)), bits, numel, dtype=dtype)
            return self.dequantize(codes, scales, bits, numel)
        nnz, n_unary = r.take_as(2, torch.int32).tolist()
        k = int(r.take(1))
        low = unpack_bits(r.take(packed_nbytes(nnz, k)), k, nnz) if k else torch.zeros(nnz, dtype=torch.int64)
        unary = r.take(packed_nbytes(n_unary, 1))
        idx = torch.cumsum(rice_decode(k, low, unary, n_unary) + 1, 0) - 1
        zero = (self.levels(bits) - 1) // 2
        nzb = self._nz_bits(bits)
        vals = unpack_bits(r.take(packed_nbytes(nnz, nzb)), nzb, nnz, dtype=dtype)
        vals += vals >= zero
        # every value is (code * 2/(K-1) - 1) * scale, as in dequantize: the zero level's value per
        # bucket everywhere, then the non-zero codes at their indices
        step = 2.0 / (self.levels(bits) - 1)
        zero_val = torch.tensor([zero], dtype=torch.float32).mul_(step).sub_(1.0)
        out = (zero_val * scales).unsqueeze(1).expand(nb, size).contiguous().view(-1)[:numel]
        bucket = idx >> (size.bit_length() - 1) if size & (size - 1) == 0 else idx.div(size, rounding_mode="floor")
        out[idx] = vals.to(torch.float32).mul_(step).sub_(1.0).mul_(scales[bucket])
        return out
