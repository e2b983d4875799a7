"""LPC: clipped low-precision quantizer (clipping formulated inside the quantizer, as in LPC-SVRG).

Per bucket, theta = min(max|v|, clip * RMS(v)); v is clipped to [-theta, theta] and stochastically
rounded onto the bits-bit uniform grid of [-theta, theta]: unbiased for the clipped value. clip -> inf
gives the TernGrad/ZipML-style max-norm quantizer. The RMS rule for theta is slimkit's [proposal]:
the paper's choice of theta is not known.
"""
from slimkit.comm._registry import register_compressor
from slimkit.comm.qsgd import QSGD


@register_compressor("lpc")
class LPC(QSGD):
    def __init__(self, bits: int = 4, clip: float = 2.5, bucket_size: int = 512, coding: str = "auto",
                 seed: int = 0, nonfinite: str = "raise"):
        super().__init__(bits=bits, norm="max", bucket_size=bucket_size, coding=coding, clip=clip,
                         seed=seed, nonfinite=nonfinite)
