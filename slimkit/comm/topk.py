"""Top-k sparsification: the k = ceil(ratio * n) largest-magnitude values as float32 with
bit-packed indices (biased: pair it with error feedback, ``ecq(inner="topk", ratio=0.01)``)."""
import math

import torch

from slimkit.comm._registry import register_compressor
from slimkit.comm.base import Compressor, bits_for
from slimkit.comm.packing import ByteReader, pack_bits, packed_nbytes, to_bytes, unpack_bits


@register_compressor("topk")
class TopK(Compressor):
    def __init__(self, ratio: float = 0.01, seed: int = 0, nonfinite: str = "raise"):
        super().__init__(seed, nonfinite)
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        self.ratio = ratio

    def _k(self, n):
        return max(1, math.ceil(self.ratio * n))

    def compress(self, flat, segments=None):
        flat = self.check_finite(flat.reshape(-1).float())
        n = flat.numel()
        idx = flat.abs().topk(self._k(n), sorted=False).indices
        return torch.cat([to_bytes(flat[idx]), pack_bits(idx, bits_for(n))])

    def decompress(self, payload, numel):
        k = self._k(numel)
        r = ByteReader(payload)
        vals = r.take_as(k, torch.float32)
        idx = unpack_bits(r.take(packed_nbytes(k, bits_for(numel))), bits_for(numel), k)
        out = torch.zeros(numel)
        out[idx] = vals
        return out
