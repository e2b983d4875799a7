"""QSGD: unbiased stochastic quantization onto a uniform grid, with bucketed L2 or max norms.

Each bucket of ``bucket_size`` values is divided by its norm, so values lie in [-1, 1], then
stochastically rounded onto K evenly spaced points of [-1, 1]: K = 2**bits - 1 (s = K // 2
non-zero levels per sign, zero included) for bits >= 2, and K = 2 ({-1, +1}) for bits = 1.
Rounding up with probability equal to the distance from the lower point keeps E[Q(v)] = v.
Wire format: 2 header bytes (coding, bits), one float32 norm per bucket, then either every code
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
            rms = x.pow(2).mean(1, keepdim=True).sqrt()
            theta = torch.minimum(x.abs().amax(1, keepdim=True), self.clip * rms)
            return x.clamp(-theta, theta), theta
        if self.norm == "l2":
            return x, x.norm(dim=1, keepdim=True)
        return x, x.abs().amax(1, keepdim=True)

    def quantize(self, flat: torch.Tensor, bits: int | None = None):
        """(codes int64 [n], scales float32 [buckets]) for ``flat``."""
        bits = bits or self.bits
        n = flat.numel()
        x, scale = self._scales(self._buckets(self.check_finite(flat.reshape(-1))))
        k = self.levels(bits)
        u = (x / scale.clamp_min(torch.finfo(torch.float32).tiny) + 1) * ((k - 1) / 2)
        u = u.clamp(0, k - 1)
        low = u.floor().clamp(max=k - 2)
        up = torch.rand(u.shape, generator=self.generator) < (u - low)
        codes = (low + up).to(torch.int64).reshape(-1)[:n]
        return codes, scale.reshape(-1)

    def dequantize(self, codes, scales, bits, n):
        k = self.levels(bits)
        size = self.bucket_size or max(n, 1)
        vals = codes.to(torch.float32) * (2.0 / (k - 1)) - 1.0
        per = scales.repeat_interleave(size)[:n]
        return vals * per

    def compress(self, flat, segments=None, bits: int | None = None):
        bits = bits or self.bits
        n = flat.numel()
        codes, scales = self.quantize(flat, bits)
        coding = self.coding if bits > 1 else "dense"
        sparse = self._sparse_parts(codes, bits) if coding != "dense" else None
        if coding == "auto":
            coding = "sparse" if sum(p.numel() for p in sparse) < packed_nbytes(n, bits) else "dense"
        head = torch.tensor([_SPARSE if coding == "sparse" else _DENSE, bits], dtype=torch.uint8)
        parts = [head, to_bytes(scales.float())]
        parts += sparse if coding == "sparse" else [pack_bits(codes, bits)]
        return torch.cat(parts)

    def _sparse_parts(self, codes, bits):
        zero = (self.levels(bits) - 1) // 2
        nz = (codes != zero).nonzero().reshape(-1)
        gaps = torch.diff(nz, prepend=torch.tensor([-1])) - 1
        k, low, unary = rice_encode(gaps)
        vals = codes[nz]
        vals = vals - (vals > zero).long()  # drop the zero level: 2 bits -> 1 bit for ternary
        counts = torch.tensor([nz.numel(), unary.numel()], dtype=torch.int32)
        return [to_bytes(counts), torch.tensor([k], dtype=torch.uint8), low, pack_bits(unary, 1),
                pack_bits(vals, self._nz_bits(bits))]

    def _nz_bits(self, bits):
        return bits_for(self.levels(bits) - 1)

    def decompress(self, payload, numel):
        r = ByteReader(payload)
        coding, bits = (int(v) for v in r.take(2))
        nb = max(1, -(-numel // (self.bucket_size or max(numel, 1))))
        scales = r.take_as(nb, torch.float32)
        if coding == _SPARSE:
            nnz, n_unary = (int(v) for v in r.take_as(2, torch.int32))
            k = int(r.take(1))
            low = unpack_bits(r.take(packed_nbytes(nnz, k)), k, nnz) if k else torch.zeros(nnz, dtype=torch.int64)
            unary = unpack_bits(r.take(packed_nbytes(n_unary, 1)), 1, n_unary)
            idx = torch.cumsum(rice_decode(k, low, unary) + 1, 0) - 1
            zero = (self.levels(bits) - 1) // 2
            vals = unpack_bits(r.take(packed_nbytes(nnz, self._nz_bits(bits))), self._nz_bits(bits), nnz)
            codes = torch.full((numel,), zero, dtype=torch.int64)
            codes[idx] = vals + (vals >= zero).long()
        else:
            codes = unpack_bits(r.take(packed_nbytes(numel, bits)), bits, numel)
        return self.dequantize(codes, scales, bits, numel)
