"""Scaled sign: sign(g) * mean|g| per bucket, 1 bit per value plus one float32 per bucket (biased:
pair it with error feedback, e.g. ``ecq(inner="sign", alpha=1, beta=1)``)."""
import torch

from slimkit.comm._registry import register_compressor
from slimkit.comm.base import Compressor
from slimkit.comm.packing import ByteReader, pack_bits, packed_nbytes, to_bytes, unpack_bits


@register_compressor("sign")
class ScaledSign(Compressor):
    def __init__(self, bucket_size: int = 512, seed: int = 0, nonfinite: str = "raise"):
        super().__init__(seed, nonfinite)
        if not isinstance(bucket_size, int) or bucket_size < 0:
            raise ValueError(f"bucket_size must be an int >= 0 (0 = one bucket), got {bucket_size!r}")
        self.bucket_size = bucket_size

    def compress(self, flat, segments=None):
        flat = self.check_finite(flat.reshape(-1).float())
        n = flat.numel()
        size = self.bucket_size or max(n, 1)
        nb = max(1, -(-n // size))
        padded = torch.zeros(nb * size)
        padded[:n] = flat
        counts = torch.full((nb, 1), float(size))
        counts[-1] = n - (nb - 1) * size
        # divide before summing: the mean of finite values cannot overflow, their sum can
        scales = padded.view(nb, size).abs().div_(counts).sum(1)
        return torch.cat([to_bytes(scales), pack_bits((flat >= 0).long(), 1)])

    def decompress(self, payload, numel):
        size = self.bucket_size or max(numel, 1)
        nb = max(1, -(-numel // size))
        r = ByteReader(payload)
        scales = r.take_as(nb, torch.float32)
        signs = unpack_bits(r.take(packed_nbytes(numel, 1)), 1, numel).float() * 2 - 1
        return signs * scales.repeat_interleave(size)[:numel]
