"""LPC-SVRG and ALPC-SVRG: quantized, clipped variance-reduced gradients for convex composite
problems, here L1-regularised logistic regression, min_x mean_i log(1 + exp(-y_i a_i.x)) + l1*|x|_1.

The workers are simulated in one process (the point is counting bits, not wall time). Each epoch
the anchor x~ and its full gradient mu travel in full precision (32 bits per value); each inner
step every worker sends Q(grad_B(x) - grad_B(x~)) with the LPC quantizer (clipping inside the
quantizer, ``slimkit.comm.lpc``), and the server takes a proximal step
x <- prox_{eta*l1}(x - eta*(mean_w Q(.) + mu)). ``bits=None`` sends float32: plain prox-SVRG.
ALPC-SVRG adds Nesterov momentum to the inner loop (gradients at the extrapolated point). The
paper's "double sampling" and its step/clipping values are not known (methods.md, "LPC-SVRG / ALPC-SVRG"): this
acceleration is slimkit's [proposal]. Bits counted = real payload bytes * 8, uplink only.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from slimkit.comm.lpc import LPC


@dataclass
class SVRGConfig:
    bits: Optional[int] = 4        # None: full-precision gradients (prox-SVRG)
    clip: float = 2.5              # LPC clipping level, in RMS units of the sent vector
    step: float = 0.5
    l1: float = 1e-3
    epochs: int = 20
    inner: int = 50                # inner iterations per epoch
    batch: int = 16                # per worker and inner iteration
    workers: int = 4
    momentum: float = 0.0          # > 0 makes it ALPC-SVRG
    seed: int = 0


@dataclass
class SVRGResult:
    objective: list = field(default_factory=list)   # after each epoch, starting with the initial point
    bits: list = field(default_factory=list)        # cumulative uplink bits at the same points
    x: Optional[torch.Tensor] = None


def logistic_l1_objective(x, A, y, l1):
    return float(torch.nn.functional.softplus(-y * (A @ x)).mean() + l1 * x.abs().sum())


def _grad(x, A, y):
    # d/dx mean softplus(-y a.x) = -mean(sigmoid(-y a.x) * y a)
    return -(torch.sigmoid(-y * (A @ x)) * y) @ A / A.shape[0]


def _prox_l1(x, t):
    return x.sign() * (x.abs() - t).clamp_min(0)


def lpc_svrg(A: torch.Tensor, y: torch.Tensor, config: SVRGConfig = SVRGConfig()) -> SVRGResult:
    """Run (A)LPC-SVRG on features A [n, d] (float64 recommended) and labels y in {-1, +1}."""
    if A.dim() != 2 or y.shape != (A.shape[0],):
        raise ValueError(f"expected A [n, d] and y [n], got {tuple(A.shape)} and {tuple(y.shape)}")
    if not set(y.unique().tolist()) <= {-1.0, 1.0}:
        raise ValueError("labels y must be -1 or +1")
    if config.workers < 1 or config.workers > A.shape[0]:
        raise ValueError(f"workers must be in 1..{A.shape[0]}, got {config.workers}")
    g = torch.Generator().manual_seed(config.seed)
    shards = torch.randperm(A.shape[0], generator=g).tensor_split(config.workers)
    d = A.shape[1]
    quantizers = []
    for w in range(config.workers):
        if config.bits is not None:
            q = LPC(bits=config.bits, clip=config.clip, bucket_size=0, coding="dense", seed=config.seed)
            q.bind(w)
            quantizers.append(q)
    x = torch.zeros(d, dtype=A.dtype)
    res = SVRGResult(objective=[logistic_l1_objective(x, A, y, config.l1)], bits=[0])
    bits = 0
    for _ in range(config.epochs):
        anchor = x.clone()
        mu = sum(_grad(anchor, A[s], y[s]) * len(s) for s in shards) / A.shape[0]
        bits += config.workers * 32 * d  # full-precision anchor gradients
        prev = x.clone()
        for _ in range(config.inner):
            point = x + config.momentum * (x - prev) if config.momentum else x
            total = torch.zeros(d, dtype=A.dtype)
            for w, s in enumerate(shards):
                idx = s[torch.randint(len(s), (config.batch,), generator=g)]
                v = _grad(point, A[idx], y[idx]) - _grad(anchor, A[idx], y[idx])
                if config.bits is None:
                    total += v
                    bits += 32 * d
                else:
                    payload = quantizers[w].compress(v.float())
                    bits += 8 * payload.numel()
                    total += quantizers[w].decompress(payload, d).to(A.dtype)
            prev = x
            x = _prox_l1(point - config.step * (total / config.workers + mu), config.step * config.l1)
        res.objective.append(logistic_l1_objective(x, A, y, config.l1))
        res.bits.append(bits)
    res.x = x
    return res


def digits_binary(path=None):
    """slimkit's embedded 8x8 digits as a binary task (digit >= 5 vs < 5): A [1797, 65] float64 with a
    bias column, features scaled to [0, 1]; y in {-1, +1}."""
    import numpy as np
    from importlib import resources

    src = path or resources.files("slimkit.data").joinpath("assets/digits.npz")
    with resources.as_file(src) if path is None else open(path, "rb") as f:
        data = np.load(f)
        x, labels = data["x"], data["y"]
    A = torch.tensor(x.reshape(len(x), -1), dtype=torch.float64) / 16.0
    A = torch.cat([A, torch.ones(len(A), 1, dtype=torch.float64)], 1)
    y = torch.tensor(labels.astype("int64") >= 5, dtype=torch.float64) * 2 - 1
    return A, y
