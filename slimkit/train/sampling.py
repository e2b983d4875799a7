"""Samplers: uniform and Lipschitz-free adaptive importance sampling (Liu et al., ICPR 2020; methods.md,
"Adaptive importance sampling").

Importance sampling keeps G_i, the last observed per-sample gradient norm (initially ``init``), and every ``period``
updates sets ``p_i = (1 - mixture) G_i / sum_j G_j + mixture / n``. Samples are drawn i.i.d. from p; the loss of
sample i is weighted by ``1 / (n p_i)`` so the mini-batch gradient stays an unbiased estimate of the full one.
Works with any optimizer (SGD, momentum, Adam take the re-weighted gradient unchanged).

Draws are lazy, one index at a time from the current p, so a DataLoader must not prefetch: use num_workers=0
(the trainer does) - otherwise the weights of a prefetched batch would come from a newer p.
"""
import torch
from torch.utils.data import Sampler

from slimkit.registry import Registry

SAMPLERS = Registry("sampler")
_SAMPLERS = SAMPLERS.entries


@SAMPLERS.register("uniform")
class UniformSampler(Sampler):
    """Seeded random permutation each epoch (the default shuffle, with an explicit seed)."""

    reweights = False

    def __init__(self, num_samples, seed=0):
        self.num_samples, self.seed, self.epoch = int(num_samples), seed, 0

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.num_samples, generator=g).tolist())


@SAMPLERS.register("importance")
class ImportanceSampler(Sampler):
    reweights = True

    def __init__(self, num_samples, seed=0, mixture=0.5, period=10, init=1.0, num_draws=None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= mixture <= 1.0:
            raise ValueError(f"mixture (theta) must be in [0, 1], got {mixture}")
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if init <= 0:
            raise ValueError(f"init must be > 0, got {init}")
        self.n, self.mixture, self.period = int(num_samples), float(mixture), int(period)
        self.num_draws = int(num_draws or num_samples)
        self.grad_norms = torch.full((self.n,), float(init), dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0
        self._refresh()

    def _refresh(self):
        total = self.grad_norms.sum()
        p = self.grad_norms / total if total > 0 else torch.full_like(self.grad_norms, 1.0 / self.n)
        self.probs = (1 - self.mixture) * p + self.mixture / self.n
        self._cdf = torch.cumsum(self.probs, 0)
        self._cdf[-1] = 1.0

    def __len__(self):
        return self.num_draws

    def __iter__(self):
        for _ in range(self.num_draws):
            u = torch.rand(1, generator=self.generator, dtype=torch.float64)
            yield int(torch.searchsorted(self._cdf, u).clamp_max(self.n - 1))

    def loss_weights(self, indices):
        """Unbiased re-weighting 1 / (n p_i) for the drawn ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return (1.0 / (self.n * self.probs[idx])).float()

    def update(self, indices, grad_norms):
        """Record per-sample gradient norms; every ``period`` calls the sampling distribution is rebuilt."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        self.grad_norms[idx] = torch.as_tensor(grad_norms, dtype=torch.float64).detach().cpu()
        self.updates += 1
        if self.updates % self.period == 0:
            self._refresh()

    def state_dict(self):
        return {"grad_norms": self.grad_norms.clone(), "updates": self.updates,
                "generator": self.generator.get_state(), "probs": self.probs.clone()}

    def load_state_dict(self, state):
        self.grad_norms = state["grad_norms"].clone()
        self.updates = state["updates"]
        self.generator.set_state(state["generator"])
        self.probs = state["probs"].clone()
        self._cdf = torch.cumsum(self.probs, 0)
        self._cdf[-1] = 1.0


def list_samplers():
    return SAMPLERS.names()


def create_sampler(name, num_samples, seed=0, **options):
    """``name`` may carry options in the spec grammar (``"importance(mixture=0.3)"``); ``options`` override."""
    return SAMPLERS.create(name, num_samples, seed=seed, **options)
