"""TernGrad: stochastic ternary {-s, 0, +s} with s = max|g| (QSGD's grid at 2 bits, max norm, one bucket)."""
from slimkit.comm._registry import register_compressor
from slimkit.comm.qsgd import QSGD


@register_compressor("terngrad")
class TernGrad(QSGD):
    def __init__(self, bucket_size: int = 0, clip: float | None = None, coding: str = "dense",
                 seed: int = 0, nonfinite: str = "raise"):
        super().__init__(bits=2, norm="max", bucket_size=bucket_size, coding=coding, clip=clip,
                         seed=seed, nonfinite=nonfinite)
